"""Bad input gets a clear 4xx naming the field, never a 500 or a stored value that breaks reads later.

Runs on SQLite, and on PostgreSQL with ``MARKETSYNC_TEST_DB=postgres``.
"""

from __future__ import annotations

import http.client
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import func, select
from sqlmodel import Session

from billing_core import wire
from tests.conftest import TEST_API_KEY
from tests.webhooks.test_receivers import _event, _post
from worker import reports
from worker.persistence.contracts import ContractRow, InboxRow, ListingRow

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
LISTING = {"marketplace": "aws", "product_id": "prod-abc", "billing_plan_id": "plan_1",
           "dimension": "usage_cost", "unit_price": "0.01"}
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]
OUT_OF_RANGE = ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "9999-06-01T00:00:00Z",
                "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z"]


@pytest.fixture
def contract_id(app: Any) -> str:
    """Store one contract and return its id."""
    with Session(app.extensions["marketsync"].engine) as session:
        session.add(ContractRow(id="ctr_1", source="contracts", external_id="c-1", marketplace="aws",
                                cloud_identifiers={"product_code": "prod-abc"}, created_at=NOW, updated_at=NOW))
        session.commit()
    return "ctr_1"


def _raw(client: Any, method: str, path: str, text: str, headers: dict[str, str]) -> Any:
    return client.open(path, method=method, data=text, headers={**headers, "Content-Type": "application/json"})


# --- numbers in JSON --------------------------------------------------------------------------------

@pytest.mark.parametrize("number", NON_FINITE)
def test_non_finite_numbers_are_refused_in_api_bodies(client: Any, auth_headers: dict[str, str], contract_id: str,
                                                     number: str) -> None:
    """NaN, Infinity and overflowing numbers are a 400 in every API body, and nothing is stored."""
    bodies = [
        ("PATCH", f"/v1/contracts/{contract_id}", '{"custom_properties": {"score": %s}}' % number),
        ("POST", "/v1/listings", json.dumps(LISTING)[:-1] + ', "name": %s}' % number),
        ("POST", "/v1/customers", '{"name": "Acme", "email": "a@example.com", "metadata": {"a": %s}}' % number),
        ("POST", "/v1/ingest", '{"events": [{"idempotency_key": "k1", "event_name": "call", '
                               '"external_customer_id": "c1", "timestamp": "2026-11-21T10:00:00Z", '
                               '"properties": {"n": %s}}]}' % number),
    ]
    for method, path, text in bodies:
        if number.lstrip("-").startswith("1e") and path == "/v1/ingest":
            continue  # ingest keeps numbers exact (Decimal): 1e400 is a value there, ranged by the events rules
        answer = _raw(client, method, path, text, auth_headers)
        assert answer.status_code == 400, (path, answer.get_json())
        assert answer.get_json()["validation_errors"][0]["field"] == "body"
    listed = client.get("/v1/contracts", headers=auth_headers)
    assert listed.status_code == 200 and json.loads(listed.get_data(as_text=True))["results"][0]["custom_properties"] == {}


@pytest.mark.parametrize("number", NON_FINITE)
def test_non_finite_numbers_are_refused_by_the_contract_receiver(app: Any, client: Any, number: str) -> None:
    """A signed contract webhook carrying NaN, Infinity or 1e400 is a 400 and is not stored."""
    body = json.dumps(_event()).replace('"previous_pricing": null', f'"previous_pricing": {number}').encode()
    answer = _post(client, None, raw=body)
    assert answer.status_code == 400, answer.get_json()
    with Session(app.extensions["marketsync"].engine) as session:
        assert session.execute(select(func.count()).select_from(InboxRow)).scalar_one() == 0


@pytest.mark.parametrize("price", ["1e-400", "1e400", "0", "-0.01", "NaN", "0.0000000000000000000000000000001"])
def test_listing_unit_price_has_the_bounds_of_billing_prices(client: Any, auth_headers: dict[str, str],
                                                              price: str) -> None:
    """A listing's unit price outside the range of billing prices is a 400 naming unit_price."""
    answer = client.post("/v1/listings", json={**LISTING, "unit_price": price}, headers=auth_headers)
    assert answer.status_code == 400, answer.get_json()
    assert "unit_price" in answer.get_json()["detail"]


def test_contract_pricing_unit_price_has_the_bounds_of_billing_prices(client: Any) -> None:
    """A contract webhook whose pricing has a unit price of 1e-400 is a 400 naming the field."""
    event = _event(pricing={"currency": "USD", "dimensions": [{"name": "usage_cost", "unit_price": "1e-400"}]})
    answer = _post(client, event)
    assert answer.status_code == 400 and "unit_price" in answer.get_json()["detail"]


# --- custom properties ------------------------------------------------------------------------------

@pytest.mark.parametrize(("properties", "field"), [
    ({"k" * 101: "v"}, "custom_properties"),
    ({f"k{i}": "v" for i in range(101)}, "custom_properties"),
    ({"big": 2**53}, "custom_properties"),
    ({"long": "x" * 1001}, "custom_properties"),
    ({"nested": {"a": 1}}, "custom_properties"),
], ids=["long-key", "too-many", "huge-integer", "long-value", "nested"])
def test_custom_properties_outside_the_limits_are_refused(client: Any, auth_headers: dict[str, str],
                                                          contract_id: str, properties: dict[str, Any],
                                                          field: str) -> None:
    """Custom properties beyond the limits are a 400 naming custom_properties."""
    answer = client.patch(f"/v1/contracts/{contract_id}", json={"custom_properties": properties}, headers=auth_headers)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["validation_errors"][0]["field"].startswith(field)


def test_a_contract_holds_at_most_100_properties(client: Any, auth_headers: dict[str, str], contract_id: str) -> None:
    """Patches that together would pass 100 properties are refused once the limit is reached."""
    path = f"/v1/contracts/{contract_id}"
    first = {f"a{i}": i for i in range(60)}
    assert client.patch(path, json={"custom_properties": first}, headers=auth_headers).status_code == 200
    answer = client.patch(path, json={"custom_properties": {f"b{i}": i for i in range(60)}}, headers=auth_headers)
    assert answer.status_code == 400 and "at most 100" in answer.get_json()["detail"]
    assert client.get(path, headers=auth_headers).get_json()["custom_properties"] == first


# --- instants ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("instant", OUT_OF_RANGE)
def test_out_of_range_instants_are_refused_in_query_filters(client: Any, auth_headers: dict[str, str],
                                                            instant: str) -> None:
    """created_at[..] filters outside the accepted range are a 400 naming the filter."""
    for path in ("/v1/customers", "/v1/metrics"):
        answer = client.get(path, query_string={"created_at[gt]": instant}, headers=auth_headers)
        assert answer.status_code == 400, (path, answer.get_json())
        assert answer.get_json()["validation_errors"][0]["field"] == "created_at[gt]"


@pytest.mark.parametrize("instant", OUT_OF_RANGE)
def test_out_of_range_instants_are_refused_in_api_fields(client: Any, auth_headers: dict[str, str],
                                                         instant: str) -> None:
    """Instants outside the accepted range are a 400 naming the field in bodies of the billing API."""
    answer = client.post("/v1/events/search", json={"event_ids": ["e1"], "timeframe_start": instant},
                         headers=auth_headers)
    assert answer.status_code == 400 and "timeframe_start" in answer.get_json()["detail"], answer.get_json()
    answer = client.post("/v1/subscriptions", json={"customer_id": "c1", "plan_id": "p1", "start_date": instant},
                         headers=auth_headers)
    assert answer.status_code in (400, 404), answer.get_json()
    answer = client.post("/v1/ingest", json={"events": [{
        "idempotency_key": "k1", "event_name": "call", "external_customer_id": "c1", "timestamp": instant,
        "properties": {}}]}, headers=auth_headers)
    assert answer.status_code == 400 and "timestamp" in json.dumps(answer.get_json()), answer.get_json()


@pytest.mark.parametrize("instant", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59",
                                     "9999-06-01T00:00:00Z"])
def test_out_of_range_instants_are_refused_by_the_contract_receiver(app: Any, client: Any, instant: str) -> None:
    """A contract webhook with effective_at or occurred_at out of range is a 400 naming it, and is not stored."""
    answer = _post(client, _event(effective_at=instant))
    assert answer.status_code == 400 and answer.get_json()["validation_errors"][0]["field"] == "data.effective_at"
    payload = _event()
    payload["occurred_at"] = instant
    answer = _post(client, payload, delivery_id="msg_2")
    assert answer.status_code == 400 and answer.get_json()["validation_errors"][0]["field"] == "occurred_at"
    with Session(app.extensions["marketsync"].engine) as session:
        assert session.execute(select(func.count()).select_from(InboxRow)).scalar_one() == 0


def test_listing_metering_start_date_is_in_range(client: Any, auth_headers: dict[str, str]) -> None:
    """A listing's metering_start_date outside the accepted range is a 400 naming it."""
    for value in ("9999-12-31", "0001-01-01T00:00:00+23:59", "1960-01-01"):
        answer = client.post("/v1/listings", json={**LISTING, "metering_start_date": value}, headers=auth_headers)
        assert answer.status_code == 400 and "metering_start_date" in answer.get_json()["detail"], answer.get_json()


@given(st.datetimes(timezones=st.timezones()))
@hypothesis_settings(max_examples=300, deadline=None)
def test_check_instant_refuses_or_answers_utc(moment: datetime) -> None:
    """Any aware datetime is either refused as out of range or returned in UTC inside the range, never overflows."""
    try:
        utc = wire.check_instant(moment, "at")
    except wire.InvalidInstant as exc:
        assert exc.field == "at"
        return
    assert wire.EARLIEST <= utc < wire.LATEST and utc.utcoffset().total_seconds() == 0


@given(st.text(max_size=40))
@hypothesis_settings(max_examples=300, deadline=None)
def test_parse_instant_never_raises_anything_else(text: str) -> None:
    """Any text is either an instant in range or an InvalidInstant naming the field."""
    try:
        wire.parse_instant(text, "at")
    except wire.InvalidInstant as exc:
        assert exc.field == "at"


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=10))
@hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_loads_accepts_exactly_what_can_be_answered_again(value: Any) -> None:
    """wire.loads accepts a JSON text exactly when it holds no NaN or infinity, and then round-trips it."""
    text = json.dumps(value)
    try:
        json.dumps(value, allow_nan=False)
        finite = True
    except ValueError:
        finite = False
    if finite:
        assert json.dumps(wire.loads(text)) == text
    else:
        with pytest.raises(wire.InvalidJson):
            wire.loads(text)


# --- bodies: size and nesting -----------------------------------------------------------------------

def test_a_chunked_body_over_the_limit_is_413(live_server: Any) -> None:
    """A chunked body past MAX_BODY_BYTES is answered 413, not "invalid JSON" from a body cut short."""
    body = b'{"custom_properties": {"a": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    conn = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=30)
    conn.request("PATCH", "/v1/contracts/ctr_1", body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                 headers={"Authorization": f"Bearer {TEST_API_KEY}", "Content-Type": "application/json"},
                 encode_chunked=True)
    answer = conn.getresponse()
    assert answer.status == 413, answer.read()[:300]


def test_a_small_chunked_body_is_read_whole(live_server: Any, app: Any) -> None:
    """A chunked body under the limit reaches the view intact."""
    with Session(app.extensions["marketsync"].engine) as session:
        session.add(ContractRow(id="ctr_1", source="contracts", external_id="c-1", marketplace="aws",
                                created_at=NOW, updated_at=NOW))
        session.commit()
    body = json.dumps({"custom_properties": {"a": "x" * 5000}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=30)
    conn.request("PATCH", "/v1/contracts/ctr_1", body=iter([body[:100], body[100:]]),
                 headers={"Authorization": f"Bearer {TEST_API_KEY}", "Content-Type": "application/json"},
                 encode_chunked=True)
    answer = conn.getresponse()
    assert answer.status == 400 and b"longer than 1000" in answer.read()  # parsed whole, then validated


def test_deeply_nested_metric_sql_is_refused_naming_sql(client: Any, auth_headers: dict[str, str]) -> None:
    """Metric SQL nested 100 levels is a 400 about the SQL ("nested too deeply"), not about the JSON body."""
    item_id = client.post("/v1/items", json={"name": "API calls"}, headers=auth_headers).get_json()["id"]
    nested = "SELECT SUM(" + "(" * 100 + "tokens" + ")" * 100 + ") FROM events WHERE event_name = 'x'"
    answer = client.post("/v1/metrics", json={"name": "m", "item_id": item_id, "sql": nested}, headers=auth_headers)
    body = answer.get_json()
    assert answer.status_code == 400 and "nested too deeply" in body["detail"], body
    assert body["validation_errors"][0]["field"] == "sql"
    chain = "SELECT COUNT(*) FROM events WHERE event_name = 'x' AND a = " + "- " * 3000 + "1"
    answer = client.post("/v1/metrics", json={"name": "m", "item_id": item_id, "sql": chain}, headers=auth_headers)
    assert answer.status_code == 400 and answer.get_json()["validation_errors"][0]["field"] == "sql"


def test_deeply_nested_json_is_refused_naming_the_body(client: Any, auth_headers: dict[str, str]) -> None:
    """A JSON body nested 100,000 levels is a 400 naming the body."""
    answer = _raw(client, "POST", "/v1/customers", "[" * 100_000 + "]" * 100_000, auth_headers)
    assert answer.status_code == 400 and answer.get_json()["detail"] == "body: JSON nested too deeply"


# --- CSV export ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_export_neutralises_formulas(start: str) -> None:
    """Cells from custom properties and cloud identifiers that start like a formula get a leading quote."""
    row = {"date": "2026-11-21", "contract_id": "ctr_1", "marketplace": "aws", "status": "active",
           "listing_id": f"{start}lst", "dimension": f"{start}dim", "unit_price": "0.01", "units_reported": 1,
           "amount": "0.01", "outcomes": {"accepted": 1},
           "identifiers": {f"{start}cmd": "x"}, "custom_properties": {f"{start}HYPERLINK(1)": "y"}}
    import csv
    import io

    cells = next(r for i, r in enumerate(csv.reader(io.StringIO(reports.as_csv([row]), newline=""))) if i == 1)
    by_name = dict(zip(reports.CSV_COLUMNS, cells))
    for name in ("listing_id", "dimension", "identifiers", "custom_properties"):
        assert by_name[name].startswith("'" + start), (name, by_name[name])
    assert by_name["amount"] == "0.01" and by_name["units_reported"] == "1"


def test_csv_export_over_http_neutralises_stored_properties(app: Any, client: Any, auth_headers: dict[str, str],
                                                            contract_id: str) -> None:
    """The metering report's CSV quotes a stored custom property that starts with '='."""
    from worker.persistence.ledger import LedgerRow

    engine = app.extensions["marketsync"].engine
    with Session(engine) as session:
        row = session.get(ContractRow, contract_id)
        row.custom_properties = {"=cmd|' /C calc'!A0": "1"}
        session.add(row)
        session.add(LedgerRow(key=f"{contract_id}:usage_cost:{NOW.isoformat()}", contract_id=contract_id,
                              marketplace="aws", dimension="usage_cost", hour=NOW, period_start=NOW, quantity=3,
                              status="accepted", kind="hourly", created_at=NOW))
        session.commit()
    answer = client.get("/v1/metering/reports?month=2026-11&format=csv", headers=auth_headers)
    assert answer.status_code == 200
    assert ",'=cmd|" in answer.get_data(as_text=True)


# --- stored values stay readable -------------------------------------------------------------------------

def test_listing_of_contracts_is_valid_json_after_refusals(client: Any, auth_headers: dict[str, str],
                                                          contract_id: str) -> None:
    """After every refused body, GET /v1/contracts is still strict JSON."""
    for number in NON_FINITE:
        _raw(client, "PATCH", f"/v1/contracts/{contract_id}", '{"custom_properties": {"x": %s}}' % number,
             auth_headers)
    text = client.get("/v1/contracts", headers=auth_headers).get_data(as_text=True)
    wire.loads(text)


def test_listing_row_is_untouched_by_a_refused_patch(app: Any, client: Any, auth_headers: dict[str, str]) -> None:
    """A refused listing PATCH (unit price 1e-400) leaves the stored price as it was."""
    created = client.post("/v1/listings", json=LISTING, headers=auth_headers).get_json()
    answer = client.patch(f"/v1/listings/{created['id']}", json={"unit_price": "1e-400"}, headers=auth_headers)
    assert answer.status_code == 400
    with Session(app.extensions["marketsync"].engine) as session:
        assert session.get(ListingRow, created["id"]).unit_price == "0.01"
