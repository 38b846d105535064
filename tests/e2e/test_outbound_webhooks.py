"""Outbound webhooks and alerts end to end with the official ``orb-billing`` client: an endpoint and
a subscription alert created through the client, usage ingested past the threshold, the event
received by a local HTTP server and checked with ``webhooks.verify_signature`` and parsed with
``webhooks.unwrap_standard``; retries and a replay against an endpoint that fails, then recovers;
every Orb event type we emit, received by an expanded endpoint and a standard one side by side,
parsed with ``webhooks.unwrap`` and ``webhooks.unwrap_standard`` and validated against the client's
expanded and standard event models."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import orb
import pytest

from billing_core import service_migrations
from tests.conftest import TEST_API_KEY, run_jobs
from tests.receiver import Receiver, receiver  # noqa: F401 - the fixture
from worker import outbound
from worker.db import session_scope

ORB_EVENT_TYPES = [
    "subscription.created", "subscription.usage_exceeded", "subscription.cost_exceeded",
    "subscription.plan_version_change_scheduled", "subscription.plan_version_changed",
    "subscription.edited", "subscription.ended", "invoice.issued",
]


@pytest.fixture
def orb_client(live_server) -> orb.Orb:  # type: ignore[no-untyped-def]
    """Return the Orb client pointed at the live test server."""
    return orb.Orb(base_url=f"{live_server.url}/v1", api_key=TEST_API_KEY, max_retries=0)


def _validate(body: bytes, style: str = "standard") -> Any:
    """Validate a received body against the client's event model of its ``type`` in ``style``
    (``types/webhooks/*_standard_webhook_event.py`` or ``types/*_webhook_event.py``)."""
    import importlib

    kind = json.loads(body)["type"].replace(".", "_")
    camel = "".join(part.capitalize() for part in kind.split("_"))
    if style == "standard":
        module = importlib.import_module(f"orb.types.webhooks.{kind}_standard_webhook_event")
        return getattr(module, f"{camel}StandardWebhookEvent").model_validate_json(body)
    module = importlib.import_module(f"orb.types.{kind}_webhook_event")
    return getattr(module, f"{camel}WebhookEvent").model_validate_json(body)


def _subscription(orb_client: orb.Orb, now: datetime) -> tuple[Any, Any]:
    item = orb_client.items.create(name="API")
    calls = orb_client.metrics.create(name="Calls", description=None, item_id=item.id,
                                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
    customer = orb_client.customers.create(name="Acme", email="ops@acme.test", external_customer_id="acme",
                                           currency="USD")
    plan = orb_client.plans.create(currency="USD", name="Pro", prices=[
        {"price": {"name": "Calls", "item_id": item.id, "model_type": "unit", "cadence": "monthly",
                   "billable_metric_id": calls.id, "unit_config": {"unit_amount": "0.50"}}}])
    sub = orb_client.subscriptions.create(customer_id=customer.id, plan_id=plan.id,
                                          start_date=now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))
    return sub, calls


def _ingest(orb_client: orb.Orb, prefix: str, n: int, at: datetime) -> None:
    orb_client.events.ingest(events=[
        {"event_name": "api_call", "idempotency_key": f"{prefix}{i}", "external_customer_id": "acme",
         "timestamp": at, "properties": {}} for i in range(n)])


def test_alert_fires_a_signed_standard_webhook(app, orb_client: orb.Orb, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    """An alert crossed by ingest reaches the endpoint signed; the client verifies and parses it; it fires once."""
    now = datetime.now(timezone.utc)
    endpoint = orb_client.webhook_endpoints.create(url=receiver.url, payload_style="standard", enabled_event_types=[
        "subscription.created", "subscription.usage_exceeded", "subscription.cost_exceeded"])
    assert endpoint.secret.startswith("whsec_") and endpoint.payload_style == "standard"
    fetched = orb_client.webhook_endpoints.retrieve(endpoint.id)
    assert "secret" not in fetched.model_dump() and fetched.url == receiver.url
    assert [e.id for e in orb_client.webhook_endpoints.list()] == [endpoint.id]

    sub, calls = _subscription(orb_client, now)
    usage_alert = orb_client.alerts.create_for_subscription(sub.id, type="usage_exceeded", metric_id=calls.id,
                                                            thresholds=[{"value": 10}, {"value": 100}])
    cost_alert = orb_client.alerts.create_for_subscription(sub.id, type="cost_exceeded", thresholds=[{"value": 4}])
    assert orb_client.alerts.retrieve(usage_alert.id).metric.id == calls.id
    assert {a.id for a in orb_client.alerts.list(subscription_id=sub.id)} == {usage_alert.id, cost_alert.id}

    _ingest(orb_client, "a", 12, now - timedelta(minutes=1))
    run_jobs(app)
    assert sorted(receiver.types()) == ["subscription.cost_exceeded", "subscription.created",
                                        "subscription.usage_exceeded"]
    for headers, body in receiver.received:
        _validate(body)
        orb_client.webhooks.verify_signature(body, headers, secret=endpoint.secret)
        event = orb_client.webhooks.unwrap_standard(body, headers, secret=endpoint.secret)
        assert event.payload_style == "standard" and event.subscription.id == sub.id
        if event.type == "subscription.usage_exceeded":
            assert event.properties.quantity_threshold == 10 and event.properties.evaluated_quantity == 12
            assert event.properties.alert_configuration.id == usage_alert.id
        if event.type == "subscription.cost_exceeded":
            assert event.properties.amount_threshold == "4" and event.properties.evaluated_amount == "6.00"
    with pytest.raises(ValueError):
        orb_client.webhooks.verify_signature(receiver.received[0][1], receiver.received[0][0], secret="whsec_wrong")

    # Disabling and enabling again, and more usage below the next threshold: nothing fires again.
    orb_client.alerts.disable(usage_alert.id)
    assert orb_client.alerts.enable(usage_alert.id).enabled is True
    _ingest(orb_client, "b", 5, now - timedelta(minutes=1))
    run_jobs(app)
    assert len(receiver.received) == 3
    assert orb_client.alerts.update(cost_alert.id, thresholds=[{"value": 4}, {"value": 8}]).thresholds[1].value == 8
    _ingest(orb_client, "c", 1, now - timedelta(minutes=1))  # 18 calls: 9.00 ≥ 8
    run_jobs(app)
    assert receiver.types()[-1] == "subscription.cost_exceeded"


def test_retry_then_replay(app, orb_client: orb.Orb, receiver: Receiver, client, auth_headers) -> None:  # type: ignore[no-untyped-def]
    """A failing endpoint is retried with backoff until it answers; a replay sends a delivery again."""
    now = datetime.now(timezone.utc)
    endpoint = orb_client.webhook_endpoints.create(url=receiver.url, payload_style="standard")
    receiver.failures = 2
    sub, _ = _subscription(orb_client, now)
    run_jobs(app)  # the first attempt fails
    runtime = app.extensions["marketsync"]
    log = client.get(f"/v1/webhook_endpoints/{endpoint.id}/deliveries", headers=auth_headers).get_json()["data"]
    assert [(d["event_type"], d["status"], d["attempts"], d["last_status_code"]) for d in log] == [
        ("subscription.created", "pending", 1, 500)]
    assert outbound.send_due(runtime, now_fn=lambda: datetime.now(timezone.utc))["delivered"] == 0  # not due yet
    outbound.send_due(runtime, now_fn=lambda: datetime.now(timezone.utc) + timedelta(seconds=11))  # fails again
    outbound.send_due(runtime, now_fn=lambda: datetime.now(timezone.utc) + timedelta(seconds=45))  # answered
    delivery = client.get(f"/v1/webhook_endpoints/{endpoint.id}/deliveries", headers=auth_headers).get_json()["data"][0]
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("delivered", 3, 200)
    assert receiver.types() == ["subscription.created"]

    replayed = client.post(f"/v1/webhook_endpoints/{endpoint.id}/deliveries/{delivery['id']}/replay",
                           headers=auth_headers)
    assert replayed.status_code == 200 and replayed.get_json()["status"] == "pending"
    run_jobs(app)
    assert receiver.types() == ["subscription.created", "subscription.created"]
    first, second = (json.loads(body) for _, body in receiver.received)
    assert first["id"] == second["id"] and first["subscription"]["id"] == sub.id  # the same event, again

    assert orb_client.webhook_endpoints.disable(endpoint.id).enabled is False
    orb_client.subscriptions.cancel(sub.id, cancel_option="end_of_subscription_term")
    run_jobs(app)
    assert len(receiver.received) == 2  # disabled by its owner: nothing is kept for it
    orb_client.webhook_endpoints.enable(endpoint.id)
    orb_client.subscriptions.cancel(sub.id, cancel_option="immediate")
    run_jobs(app)
    assert receiver.types()[2:] == ["subscription.edited", "subscription.ended"]
    orb_client.webhook_endpoints.update(endpoint.id, enabled_event_types=["invoice.issued"])
    assert orb_client.webhook_endpoints.retrieve(endpoint.id).enabled_event_types == ["invoice.issued"]
    invoice = orb_client.invoices.list(subscription_id=sub.id).data[0]
    orb_client.invoices.issue(invoice.id)
    orb_client.invoices.issue(invoice.id)  # issuing twice returns the first snapshot: one event
    run_jobs(app)
    assert receiver.types()[4:] == ["invoice.issued"]
    for _, body in receiver.received:
        _validate(body)
    issued = orb_client.webhooks.unwrap_standard(receiver.received[-1][1], receiver.received[-1][0],
                                                 secret=endpoint.secret)
    assert issued.invoice.id == invoice.id and issued.invoice.status == "issued"
    orb_client.webhook_endpoints.delete(endpoint.id)
    with pytest.raises(orb.NotFoundError):
        orb_client.webhook_endpoints.retrieve(endpoint.id)


def test_expanded_endpoints_get_orb_s_expanded_objects(app, orb_client: orb.Orb, receiver: Receiver,  # type: ignore[no-untyped-def]
                                                       client, auth_headers) -> None:
    """Every Orb event type reaches an expanded endpoint with the full subscription or invoice (the client's
    ``webhooks.unwrap`` and expanded models accept it) and a standard endpoint with references, same event."""
    now = datetime.now(timezone.utc)
    expanded = orb_client.webhook_endpoints.create(url=receiver.url)  # expanded: Orb's default
    assert expanded.payload_style == "expanded"
    standard_receiver = Receiver()
    try:
        standard = orb_client.webhook_endpoints.create(url=standard_receiver.url, payload_style="standard")
        sub, calls = _subscription(orb_client, now)
        orb_client.alerts.create_for_subscription(sub.id, type="usage_exceeded", metric_id=calls.id,
                                                  thresholds=[{"value": 10}])
        orb_client.alerts.create_for_subscription(sub.id, type="cost_exceeded", thresholds=[{"value": 4}])
        _ingest(orb_client, "a", 12, now - timedelta(minutes=1))
        run_jobs(app)

        # A plan version 2 and a migration scheduled a moment ahead: told when written, again when reached.
        plan_id = sub.plan.id
        calls_price = orb_client.plans.fetch(plan_id).prices[0]
        v2 = client.post(f"/v1/plans/{plan_id}/versions", headers=auth_headers, json={"version": 2, "replace_prices": [
            {"replaces_price_id": calls_price.id, "price": {
                "name": "Calls", "item_id": calls_price.item.id, "model_type": "unit", "cadence": "monthly",
                "billable_metric_id": calls.id, "unit_config": {"unit_amount": "0.75"}}}]})
        assert v2.status_code == 201, v2.json
        effective = now + timedelta(seconds=60)
        started = client.post(f"/v1/plans/{plan_id}/migrations", headers=auth_headers,
                              json={"to_version": 2, "effective_time": effective.isoformat()})
        assert started.status_code == 201, started.json
        run_jobs(app)
        runtime = app.extensions["marketsync"]
        with session_scope(runtime.engine) as session:
            assert service_migrations.note_effective(session, since=now, now=effective + timedelta(seconds=1)) == 1
        outbound.send_due(runtime, now_fn=lambda: datetime.now(timezone.utc) + timedelta(seconds=120))

        orb_client.subscriptions.cancel(sub.id, cancel_option="immediate")
        run_jobs(app)
        orb_client.invoices.issue(orb_client.invoices.list(subscription_id=sub.id).data[0].id)
        run_jobs(app)

        assert sorted(receiver.types()) == sorted(standard_receiver.types()) == sorted(ORB_EVENT_TYPES)
        standard_bodies = {json.loads(body)["id"]: body for _, body in standard_receiver.received}
        for headers, body in receiver.received:
            _validate(body, "expanded")
            event = orb_client.webhooks.unwrap(body, headers, secret=expanded.secret)
            assert event.payload_style == "expanded"
            plain = json.loads(standard_bodies[event.id])
            _validate(standard_bodies[event.id])
            assert plain["payload_style"] == "standard" and plain["properties"] == json.loads(body)["properties"]
            if event.type == "invoice.issued":
                assert event.invoice.id == plain["invoice"]["id"] and event.invoice.status == "issued"
                assert event.invoice.line_items and event.invoice.subtotal is not None
                assert "line_items" not in plain["invoice"]
                continue
            full = event.subscription
            assert full.id == sub.id and full.customer.name == "Acme" and full.customer.email == "ops@acme.test"
            assert full.plan is not None and full.plan.id == plan_id and full.price_intervals
            assert plain["subscription"]["customer"] == {"id": full.customer.id, "external_customer_id": "acme"}
            assert full.status == plain["subscription"]["status"]
        by_type = {json.loads(body)["type"]: json.loads(body) for _, body in receiver.received}
        # The body is the object as of the change, not as of the send.
        assert by_type["subscription.created"]["subscription"]["plan"]["version"] == 1
        assert by_type["subscription.plan_version_changed"]["subscription"]["plan"]["version"] == 2
        assert by_type["subscription.ended"]["subscription"]["status"] == "ended"
        assert by_type["subscription.created"]["subscription"]["status"] == "active"
    finally:
        standard_receiver.stop()
