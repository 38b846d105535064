"""Security suite: bodies that attack the parser, routes without credentials, replayed
deliveries, metric SQL injection, and secrets that must never show in logs or responses."""

from __future__ import annotations

import json
import re
import time

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET
from worker.persistence.contracts import InboxRow
from worker.standard_webhooks import signed_headers

RECEIVERS = ["/webhooks/contracts", "/webhooks/aws/sns", "/webhooks/aws/events", "/webhooks/azure",
             "/webhooks/gcp/pubsub"]
JSON_APIS = ["/v1/ingest", "/v1/customers", "/v1/metrics", "/v1/plans", "/v1/items", "/v1/subscriptions",
             "/v1/events/search", "/v1/listings"]
DEEP = b"[" * 50_000 + b"]" * 50_000


def _inbox_count(app) -> int:  # type: ignore[no-untyped-def]
    with Session(app.extensions["marketsync"].engine) as session:
        return session.execute(select(func.count()).select_from(InboxRow)).scalar_one()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TEST_API_KEY}", "Content-Type": "application/json"}


@pytest.mark.parametrize("path", RECEIVERS + JSON_APIS)
def test_deeply_nested_body_is_400(app, client, path: str) -> None:  # type: ignore[no-untyped-def]
    """A body nested 50,000 levels deep is refused with 400, never a 500, and nothing is stored."""
    headers = _auth()
    if path == "/webhooks/contracts":
        headers.update(signed_headers(TEST_WEBHOOK_SECRET, "deep", int(time.time()), DEEP))
    if path == "/webhooks/aws/sns":
        headers["x-amz-sns-message-type"] = "Notification"
    response = client.post(path, data=DEEP, headers=headers)
    assert response.status_code in (400, 401), (path, response.status_code)
    assert response.is_json and response.json["status"] == response.status_code
    assert _inbox_count(app) == 0


@pytest.mark.parametrize("path", RECEIVERS + JSON_APIS)
def test_oversized_body_is_413(client, path: str) -> None:  # type: ignore[no-untyped-def]
    """A body over the limit is refused with a JSON 413 before it is read."""
    response = client.post(path, data=b"{" + b" " * (1024 * 1024 + 10) + b"}", headers=_auth())
    assert response.status_code == 413 and response.json["status"] == 413


def _api_rules(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1"):
            continue
        path = re.sub(r"<[^>]+>", "x", re.sub(r"<int:[^>]+>", "1", rule.rule))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            out.append((method, path))
    return out


def test_every_api_route_needs_a_key(app, client) -> None:  # type: ignore[no-untyped-def]
    """Every /v1 route answers 401 without a key and with a wrong one (never 2xx, never 500)."""
    rules = _api_rules(app)
    assert len(rules) > 30
    for number, (method, path) in enumerate(rules):
        # One client address per route: the failed-key throttle would answer 429 after ten.
        remote = {"REMOTE_ADDR": f"10.0.{number // 250}.{number % 250 + 1}"}
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Basic {TEST_API_KEY}"}):
            response = client.open(path, method=method, headers=headers, json={}, environ_base=remote)
            assert response.status_code == 401, (method, path, headers, response.status_code)


def test_dashboard_needs_a_session(client) -> None:  # type: ignore[no-untyped-def]
    """Dashboard pages redirect to the login page without a session; a POST without one is refused."""
    for path in ("/ops/", "/ops/contracts", "/ops/contracts/ctr_x", "/ops/listings", "/ops/jobs/failed"):
        response = client.get(path)
        assert response.status_code in (302, 303) and "/ops/login" in response.headers["Location"], path
    assert client.post("/ops/logout").status_code in (302, 303, 400, 401, 403)


def test_replayed_webhook(app, client) -> None:  # type: ignore[no-untyped-def]
    """A replay inside the tolerance is a harmless duplicate; a stale one is refused and stored nowhere."""
    body = json.dumps({"id": "evt_r", "type": "contract.renewed", "occurred_at": "2026-11-21T10:00:00Z",
                       "data": {"contract_id": "ctr_r", "marketplace": "aws"}}).encode()
    now = int(time.time())
    fresh = signed_headers(TEST_WEBHOOK_SECRET, "msg_replay", now, body)
    assert client.post("/webhooks/contracts", data=body, headers=fresh).status_code == 202
    again = client.post("/webhooks/contracts", data=body, headers=fresh)
    assert again.status_code == 202 and again.json["duplicate"] is True
    stale = signed_headers(TEST_WEBHOOK_SECRET, "msg_replay_old", now - 3600, body)
    assert client.post("/webhooks/contracts", data=body, headers=stale).status_code == 401
    future = signed_headers(TEST_WEBHOOK_SECRET, "msg_replay_new", now + 3600, body)
    assert client.post("/webhooks/contracts", data=body, headers=future).status_code == 401
    assert _inbox_count(app) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT SUM(tokens) FROM events; DROP TABLE events",
        "SELECT SUM(tokens) FROM events WHERE model = '' OR 1=1 --",
        "SELECT SUM(tokens) FROM events UNION SELECT SUM(id) FROM customers",
        "SELECT SUM(tokens) FROM (SELECT * FROM events)",
        "SELECT SUM(tokens) FROM customers",
        "DELETE FROM events",
    ],
    ids=["stacked", "comment-tautology", "union", "subquery", "other-table", "dml"],
)
def test_metric_sql_injection_is_refused(app, client, sql: str) -> None:  # type: ignore[no-untyped-def]
    """Metric SQL outside the supported subset is a 400 and the events table is untouched."""
    item = client.post("/v1/items", json={"name": "API calls"}, headers=_auth()).json["id"]
    response = client.post("/v1/metrics", json={"name": "m", "sql": sql, "item_id": item, "metadata": {}},
                           headers=_auth())
    assert response.status_code == 400, response.get_data(as_text=True)
    with Session(app.extensions["marketsync"].engine) as session:
        session.execute(select(func.count()).select_from(InboxRow)).scalar_one()  # the database still answers


def test_secrets_never_appear_in_logs_or_responses(settings, redis_conn, capsys) -> None:  # type: ignore[no-untyped-def]
    """Requests that carry the configured secrets in odd places never echo them in logs or bodies."""
    from webhooks import create_app

    app = create_app(settings.model_copy(update={"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}))
    client = app.test_client()
    secrets = settings.secrets()
    assert TEST_API_KEY in secrets and TEST_WEBHOOK_SECRET in secrets
    bodies = []
    body = json.dumps({"id": "e", "type": "contract.created", "occurred_at": "2026-11-21T10:00:00Z",
                       "data": {"contract_id": TEST_WEBHOOK_SECRET, "marketplace": "aws"}}).encode()
    requests_to_make = [
        ("GET", f"/v1/customers?api_key={TEST_API_KEY}", {}),
        ("GET", f"/v1/customers/{TEST_API_KEY}", {"Authorization": f"Bearer {TEST_API_KEY}x"}),
        ("GET", f"/nowhere/{TEST_WEBHOOK_SECRET}", {}),
        ("POST", "/webhooks/contracts", {"webhook-signature": f"v1,{TEST_WEBHOOK_SECRET}", "webhook-id": "x",
                                         "webhook-timestamp": str(int(time.time()))}),
        ("POST", "/webhooks/aws/events", {"Authorization": f"Bearer {TEST_WEBHOOK_SECRET}"}),
        ("POST", "/ops/login", {}),
    ]
    for method, path, headers in requests_to_make:
        response = client.open(path, method=method, headers=headers, data=body if method == "POST" else None)
        assert response.status_code < 500, (path, response.status_code)
        bodies.append(response.get_data(as_text=True))
    login = client.post("/ops/login", data={"api_key": TEST_API_KEY + "-wrong"})
    bodies.append(login.get_data(as_text=True))
    logs = capsys.readouterr()
    for secret in secrets:
        for text in (*bodies, logs.err, logs.out):
            assert secret not in text, "a configured secret leaked"
