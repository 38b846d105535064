"""``POST /v1/ingest`` and the event endpoints: Orb shapes, whole-batch rejection, corrections."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

KEY = "2026-11-20T10:00:00Z"


def ev(key: str, **overrides: Any) -> dict[str, Any]:
    """Return a valid event body for the API."""
    body = {"idempotency_key": key, "event_name": "api_call", "external_customer_id": "acme",
            "timestamp": KEY, "properties": {"tokens": 10, "cost": 0.5}}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def post(client, auth_headers, events: Any, query: str = "") -> Any:  # type: ignore[no-untyped-def]
    """Send one ingest request."""
    return client.post(f"/v1/ingest{query}", json={"events": events}, headers=auth_headers)


def test_ingest_answers_orbs_shape(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """A valid batch is answered 200 with an empty validation_failed list."""
    response = post(client, auth_headers, [ev("a"), ev("b")])
    assert response.status_code == 200
    assert response.get_json() == {"validation_failed": []}


def test_debug_lists_ingested_and_duplicates(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """With ?debug=true the answer says which keys were new and which were already stored."""
    post(client, auth_headers, [ev("a")])
    response = post(client, auth_headers, [ev("a"), ev("b")], "?debug=true")
    assert response.get_json()["debug"] == {"duplicate": ["a"], "ingested": ["b"]}


REJECTIONS = [
    pytest.param([ev("a", properties={"x": {"y": 1}})], 400, "properties.x", id="nested-property"),
    pytest.param([ev("a", timestamp="2999-01-01T00:00:00Z")], 400, "future", id="future-timestamp"),
    pytest.param([ev(f"k{i}") for i in range(501)], 400, "limit is 500", id="over-500"),
    pytest.param([ev("a"), ev("a", properties={"tokens": 11})], 409, "'a'", id="same-key-different-body"),
    pytest.param([ev("a", colour="red")], 400, "colour", id="unknown-event-field"),
    pytest.param("nope", 400, "events", id="events-not-a-list"),
]


@pytest.mark.parametrize("events, status, detail", REJECTIONS)
def test_bad_batches_are_rejected_whole(client, auth_headers, events: Any, status: int, detail: str) -> None:  # type: ignore[no-untyped-def]
    """A bad batch gets a 4xx naming the problem and nothing of it is stored."""
    response = post(client, auth_headers, events if isinstance(events, str) else [ev("good")] + events)
    body = response.get_json()
    assert response.status_code == status
    assert detail in body["detail"]
    assert {"type", "status", "title", "detail"} <= set(body)
    search = client.post("/v1/events/search", json={"event_ids": ["good"], "timeframe_start": "2026-01-01T00:00:00Z",
                                                      "timeframe_end": "2027-01-01T00:00:00Z"}, headers=auth_headers)
    assert search.get_json() == {"data": []}


def test_conflict_with_a_stored_event_names_the_key(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """Reusing a stored key with another body rejects the whole later batch with 409 naming the key."""
    post(client, auth_headers, [ev("a")])
    response = post(client, auth_headers, [ev("b"), ev("a", properties={"tokens": 1})])
    assert response.status_code == 409
    assert response.get_json()["validation_failed"][0]["idempotency_key"] == "a"


def test_validation_failed_lists_every_bad_event(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """Every failing event appears in validation_failed with its errors."""
    response = post(client, auth_headers, [ev("a", event_name=""), ev("b"), ev("c", properties={"x": None})])
    failed = response.get_json()["validation_failed"]
    assert [f["idempotency_key"] for f in failed] == ["a", "c"]


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param(b"{not json", "body", id="not-json"),
        pytest.param(b'{"events": [], "extra": 1}', "extra", id="unknown-top-level-field"),
        pytest.param(b"[]", "body", id="not-an-object"),
    ],
)
def test_malformed_bodies_are_400(client, auth_headers, body: bytes, field: str) -> None:  # type: ignore[no-untyped-def]
    """A body that is not a JSON object with only ``events`` is a 400 naming the field."""
    response = client.post("/v1/ingest", data=body, headers={**auth_headers, "Content-Type": "application/json"})
    assert response.status_code == 400
    assert field in response.get_json()["detail"]


def test_ingest_needs_the_api_key(client) -> None:  # type: ignore[no-untyped-def]
    """Without a Bearer key the ingest endpoint answers 401."""
    assert client.post("/v1/ingest", json={"events": []}).status_code == 401


def test_search_amend_and_deprecate(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """Search shows exact numbers; amend replaces the body; deprecate flags the event."""
    post(client, auth_headers, [ev("a")])
    exact = '{"events": [{"idempotency_key": "b", "event_name": "api_call", "external_customer_id": "acme", ' \
        '"timestamp": "2026-11-20T10:00:00Z", "properties": {"cost": 1.500000000}}]}'
    client.post("/v1/ingest", data=exact, headers={**auth_headers, "Content-Type": "application/json"})
    window = {"timeframe_start": "2026-11-20T00:00:00Z", "timeframe_end": "2026-11-21T00:00:00Z"}
    amended = client.put("/v1/events/a", json={"event_name": "api_call", "external_customer_id": "acme",
                                                "timestamp": KEY, "properties": {"tokens": 5}}, headers=auth_headers)
    assert amended.get_json() == {"amended": "a"}
    assert client.put("/v1/events/b/deprecate", headers=auth_headers).get_json() == {"deprecated": "b"}
    found = client.post("/v1/events/search", json={"event_ids": ["a", "b"], **window}, headers=auth_headers)
    raw = found.get_data(as_text=True)
    assert '"cost":1.500000000' in raw
    data = {e["id"]: e for e in found.get_json()["data"]}
    assert data["a"]["properties"] == {"tokens": 5} and data["a"]["deprecated"] is False
    assert data["b"]["deprecated"] is True and data["b"]["timestamp"] == KEY


@pytest.mark.parametrize(
    "method, path, status",
    [
        pytest.param("put", "/v1/events/missing/deprecate", 404, id="deprecate-unknown"),
        pytest.param("get", "/v1/no-such-thing", 404, id="unknown-route"),
        pytest.param("delete", "/v1/ingest", 405, id="wrong-method"),
    ],
)
def test_unknown_things_are_clear_4xx(client, auth_headers, method: str, path: str, status: int) -> None:  # type: ignore[no-untyped-def]
    """Unknown events, routes and methods get a JSON 4xx, never a 500."""
    response = getattr(client, method)(path, headers=auth_headers)
    assert response.status_code == status
    assert response.get_json()["status"] == status


def test_timestamps_just_inside_the_future_window_are_accepted(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """An event 4 minutes ahead of the server clock is accepted."""
    soon = (datetime.now(timezone.utc) + timedelta(minutes=4)).isoformat()
    assert post(client, auth_headers, [ev("a", timestamp=soon)]).status_code == 200


@pytest.mark.parametrize("method", ["put", "post"])
def test_deprecate_accepts_put_and_post(client, auth_headers, method: str) -> None:  # type: ignore[no-untyped-def]
    """Deprecation answers Orb's shape whether sent as PUT (the client) or POST."""
    post(client, auth_headers, [ev("a")])
    response = getattr(client, method)("/v1/events/a/deprecate", headers=auth_headers)
    assert response.get_json() == {"deprecated": "a"}


def _raw(client, auth_headers, path: str, text: str, method: str = "post"):  # type: ignore[no-untyped-def]
    """Send a JSON text as it is (numbers keep their digits)."""
    return getattr(client, method)(path, data=text, headers={**auth_headers, "Content-Type": "application/json"})


@pytest.mark.parametrize("number", [
    pytest.param("1e30", id="1e30"), pytest.param("1000000000000000.5", id="past-1e15"),
    pytest.param("12345678901234567891", id="twenty-digit-integer"), pytest.param("0.0000000001", id="ten-places"),
])
def test_ingest_refuses_numbers_outside_the_range(client, auth_headers, number: str) -> None:  # type: ignore[no-untyped-def]
    """A property outside the range is a 400 naming the event's key and the property; nothing is stored."""
    body = ('{"events": [{"idempotency_key": "fine", "event_name": "api_call", "external_customer_id": "acme", '
            '"timestamp": "%s", "properties": {"tokens": 1}}, {"idempotency_key": "huge", "event_name": "api_call", '
            '"external_customer_id": "acme", "timestamp": "%s", "properties": {"tokens": %s}}]}' % (KEY, KEY, number))
    response = _raw(client, auth_headers, "/v1/ingest", body)
    assert response.status_code == 400, response.get_json()
    (failure,) = response.get_json()["validation_failed"]
    assert failure["idempotency_key"] == "huge" and failure["validation_errors"][0].startswith("properties.tokens:")
    found = client.post("/v1/events/search", json={"event_ids": ["fine", "huge"], "timeframe_start": "2026-11-20T00:00:00Z",
                                                   "timeframe_end": "2026-11-21T00:00:00Z"}, headers=auth_headers)
    assert found.get_json()["data"] == []


def test_amendment_and_backfill_refuse_numbers_outside_the_range(client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """Amending an event, or ingesting into a backfill, checks the same range."""
    post(client, auth_headers, [ev("a")])
    amended = _raw(client, auth_headers, "/v1/events/a", '{"event_name": "api_call", "external_customer_id": "acme", '
                   f'"timestamp": "{KEY}", "properties": {{"tokens": 1e30}}}}', method="put")
    assert amended.status_code == 400 and "properties.tokens" in amended.get_json()["detail"]
    backfill = client.post("/v1/events/backfills", json={"timeframe_start": "2026-11-19T00:00:00Z",
                                                          "timeframe_end": "2026-11-21T00:00:00Z"}, headers=auth_headers)
    assert backfill.status_code == 200, backfill.get_json()
    body = ('{"events": [{"idempotency_key": "b1", "event_name": "api_call", "external_customer_id": "acme", '
            f'"timestamp": "{KEY}", "properties": {{"tokens": 5000000000000000.5}}}}]}}')
    refused = _raw(client, auth_headers, f"/v1/ingest?backfill_id={backfill.get_json()['id']}", body)
    assert refused.status_code == 400 and refused.get_json()["validation_failed"][0]["idempotency_key"] == "b1"
