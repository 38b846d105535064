"""The dashboard's webhook and alert pages: endpoints and their delivery log with a replay button
(never a secret), and alerts per subscription with thresholds and when they last fired."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from billing_core import emit, service_alerts, service_outbox
from tests.dashboard.conftest import Seeded, _subscription_of, csrf_of
from worker import outbound
from worker.db import session_scope


def test_endpoint_log_and_replay(app: Any, ops_client: Any, seeded: Seeded) -> None:
    """The endpoint page lists each delivery's attempts and error; Replay makes it pending again."""
    runtime = app.extensions["marketsync"]
    with session_scope(runtime.engine) as session:
        endpoint = service_outbox.create_endpoint(session, url="http://127.0.0.1:9/dead", now=datetime.now(UTC),
                                                  endpoint_id="we_dash")
        emit(session, "contract.closed", {"type": "contract.closed", "contract": {"id": seeded.acme}, "properties": {}},
             now=datetime.now(UTC), ordering_key=f"contract:{seeded.acme}")
    outbound.send_endpoint(runtime, "we_dash", now_fn=lambda: datetime.now(UTC))
    listing = ops_client.get("/ops/webhooks").get_data(as_text=True)
    assert "http://127.0.0.1:9/dead" in listing and endpoint.secret not in listing
    page = ops_client.get("/ops/webhooks/we_dash").get_data(as_text=True)
    assert "contract.closed" in page and "ConnectionError" in page and endpoint.secret not in page
    delivery_id = page.split("/deliveries/")[1].split("/replay")[0]
    answer = ops_client.post(f"/ops/webhooks/we_dash/deliveries/{delivery_id}/replay",
                             data={"csrf_token": csrf_of(page)})
    assert answer.status_code == 302
    assert "queued to be sent again" in ops_client.get("/ops/webhooks/we_dash").get_data(as_text=True)
    assert ops_client.get("/ops/webhooks/we_missing").status_code == 404
    assert ops_client.post("/ops/webhooks/we_dash/deliveries/999999/replay",
                           data={"csrf_token": csrf_of(page)}).status_code == 404


def test_alerts_page(app: Any, ops_client: Any, seeded: Seeded) -> None:
    """Alerts are grouped by subscription with their thresholds; one never fired says so."""
    runtime = app.extensions["marketsync"]
    sub = _subscription_of(runtime.engine, seeded.acme)
    with session_scope(runtime.engine) as session:
        service_alerts.create_alert(session, scope="subscription", scope_id=sub, alert_id="alert_dash",
                                    body={"type": "cost_exceeded", "thresholds": [{"value": 25}, {"value": "7.5"}]},
                                    now=datetime.now(UTC))
    page = ops_client.get("/ops/alerts").get_data(as_text=True)
    assert f"subscription {sub}" in page and "alert_dash" in page and "7.5, 25" in page and "never" in page
