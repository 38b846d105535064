"""The official ``orb-billing`` client against a live server: customers, metrics, ingest, events."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orb
import pytest

from billing_core.persistence.catalog import SqlCatalog
from billing_core.plans import Item
from billing_core.sql_usage import SqlUsageSource
from tests.conftest import TEST_API_KEY
from worker.db import session_scope


@pytest.fixture
def orb_client(live_server) -> orb.Orb:  # type: ignore[no-untyped-def]
    """Return the Orb client pointed at the live test server."""
    return orb.Orb(base_url=f"{live_server.url}/v1", api_key=TEST_API_KEY, max_retries=0)


@pytest.fixture
def item_id(app) -> str:  # type: ignore[no-untyped-def]
    """Return the id of a stored item."""
    with session_scope(app.extensions["marketsync"].engine) as session:
        SqlCatalog(session).add_item(Item(id="item_tokens", name="Tokens",
                                          created_at=datetime(2026, 1, 1, tzinfo=timezone.utc)))
    return "item_tokens"


def test_customers_metrics_ingest_and_events(app, orb_client: orb.Orb, item_id: str) -> None:  # type: ignore[no-untyped-def]
    """The Orb client creates customers and metrics, ingests, searches, amends and deprecates events."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    hour_ago = now - timedelta(hours=1)

    # Events sent before the customer exists are kept and attached later.
    early = orb_client.events.ingest(events=[{
        "event_name": "api_call", "idempotency_key": "early-1", "external_customer_id": "acme",
        "timestamp": hour_ago, "properties": {"tokens": 5, "model": "gpt-4"},
    }])
    assert early.validation_failed == []

    customer = orb_client.customers.create(name="Acme", email="ops@acme.test", external_customer_id="acme",
                                           currency="USD")
    assert customer.timezone == "UTC" and customer.external_customer_id == "acme"
    assert orb_client.customers.fetch(customer.id).id == customer.id
    assert orb_client.customers.fetch_by_external_id("acme").id == customer.id
    updated = orb_client.customers.update(customer.id, metadata={"tier": "gold"})
    assert updated.metadata == {"tier": "gold"}
    orb_client.customers.create(name="Globex", email="ops@globex.test", external_customer_id="globex")
    listed = [c.id for c in orb_client.customers.list(limit=1)]  # auto-pagination follows next_cursor
    assert len(listed) == 2 and customer.id in listed

    metric = orb_client.metrics.create(
        name="GPT-4 tokens", description=None, item_id=item_id,
        sql="SELECT SUM(tokens) FROM events WHERE event_name = 'api_call' AND model = 'gpt-4'",
    )
    assert metric.item.id == item_id and metric.status == "active"
    assert orb_client.metrics.fetch(metric.id).sql == metric.sql
    assert [m.id for m in orb_client.metrics.list()] == [metric.id]
    with pytest.raises(orb.BadRequestError) as refused:
        orb_client.metrics.create(name="x", description=None, item_id=item_id,
                                  sql="SELECT SUM(x) FROM events; DROP TABLE events")
    assert "multiple statements" in str(refused.value)

    result = orb_client.events.ingest(events=[
        {"event_name": "api_call", "idempotency_key": f"k{i}", "external_customer_id": "acme",
         "timestamp": hour_ago + timedelta(minutes=i), "properties": {"tokens": 10, "model": "gpt-4"}}
        for i in range(3)
    ] + [{"event_name": "api_call", "idempotency_key": "other-model", "customer_id": customer.id,
          "timestamp": hour_ago, "properties": {"tokens": 1000, "model": "gpt-3"}}])
    assert result.validation_failed == []
    with pytest.raises(orb.ConflictError) as conflict:
        orb_client.events.ingest(events=[{
            "event_name": "api_call", "idempotency_key": "k0", "external_customer_id": "acme",
            "timestamp": hour_ago, "properties": {"tokens": 999, "model": "gpt-4"},
        }])
    assert "k0" in str(conflict.value)

    assert orb_client.events.update("k1", event_name="api_call", external_customer_id="acme",
                                    timestamp=hour_ago + timedelta(minutes=1),
                                    properties={"tokens": 30, "model": "gpt-4"}).amended == "k1"
    assert orb_client.events.deprecate("k2").deprecated == "k2"
    found = orb_client.events.search(event_ids=["early-1", "k1", "k2"], timeframe_start=now - timedelta(days=1),
                                     timeframe_end=now + timedelta(minutes=5))
    by_id = {e.id: e for e in found.data}
    assert by_id["k1"].properties == {"tokens": 30, "model": "gpt-4"}
    assert by_id["k2"].deprecated is True and by_id["early-1"].customer_id == customer.id

    usage = SqlUsageSource(app.extensions["marketsync"].engine).usage(
        metric.id, customer.id, now - timedelta(days=1), now + timedelta(minutes=5))
    assert (usage.quantity, usage.event_count) == (Decimal(5 + 10 + 30), 3)


def test_backfill_through_the_client(app, orb_client: orb.Orb) -> None:  # type: ignore[no-untyped-def]
    """A backfill created, filled and closed with the Orb client replaces the window's usage."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    customer = orb_client.customers.create(name="Acme", email="ops@acme.test", external_customer_id="acme")
    day_ago = now - timedelta(days=1)
    orb_client.events.ingest(events=[{"event_name": "call", "idempotency_key": "live", "external_customer_id": "acme",
                                      "timestamp": day_ago, "properties": {"n": 100}}])
    backfill = orb_client.events.backfills.create(timeframe_start=day_ago - timedelta(hours=1),
                                                  timeframe_end=day_ago + timedelta(hours=1),
                                                  customer_id=customer.id, replace_existing_events=True)
    assert backfill.status == "pending"
    orb_client.events.ingest(backfill_id=backfill.id, events=[
        {"event_name": "call", "idempotency_key": "fixed", "external_customer_id": "acme",
         "timestamp": day_ago, "properties": {"n": 40}}])
    assert orb_client.events.backfills.fetch(backfill.id).events_ingested == 1
    assert orb_client.events.backfills.close(backfill.id).status == "reflected"
    assert [b.id for b in orb_client.events.backfills.list()] == [backfill.id]
    found = {e.id: e.deprecated for e in orb_client.events.search(
        event_ids=["live", "fixed"], timeframe_start=now - timedelta(days=2)).data}
    assert found == {"live": True, "fixed": False}
    from billing_core import MetricDefinition

    usage = SqlUsageSource(app.extensions["marketsync"].engine).evaluate(
        MetricDefinition("call", "sum", "n"), [customer.id], now - timedelta(days=2), now)
    assert usage[customer.id].quantity == Decimal(40)
    assert orb_client.events.backfills.revert(backfill.id).status == "reverted"
