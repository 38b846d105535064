"""The official ``orb-billing`` client against a live server: items, plans and versions,
subscriptions, costs, the upcoming invoice, a mid-period plan change and a cancellation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orb
import pytest

from tests.conftest import TEST_API_KEY


@pytest.fixture
def orb_client(live_server) -> orb.Orb:  # type: ignore[no-untyped-def]
    """Return the Orb client pointed at the live test server."""
    return orb.Orb(base_url=f"{live_server.url}/v1", api_key=TEST_API_KEY, max_retries=0)


def _unit(item_id: str, metric_id: str, amount: str, name: str) -> dict:
    return {"price": {"name": name, "item_id": item_id, "model_type": "unit", "cadence": "monthly",
                      "billable_metric_id": metric_id, "unit_config": {"unit_amount": amount}}}


def test_plans_subscriptions_costs_invoices(orb_client: orb.Orb) -> None:
    """The Orb client drives the whole pricing side: plan, subscription, costs, upcoming, change, cancel."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    period_start = now.replace(day=1, hour=0, minute=0, second=0)
    minutes_ago = max(now - timedelta(minutes=30), period_start)

    item = orb_client.items.create(name="API")
    assert orb_client.items.fetch(item.id).name == "API"
    assert [i.id for i in orb_client.items.list()] == [item.id]

    calls = orb_client.metrics.create(name="Calls", description=None, item_id=item.id,
                                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
    tokens = orb_client.metrics.create(name="Tokens", description=None, item_id=item.id,
                                       sql="SELECT SUM(tokens) FROM events WHERE event_name = 'api_call'")
    regions = orb_client.metrics.create(name="Calls by region", description=None, item_id=item.id,
                                        sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
    customer = orb_client.customers.create(name="Acme", email="ops@acme.test", external_customer_id="acme",
                                           currency="USD")

    plan = orb_client.plans.create(currency="USD", name="Pro", external_plan_id="pro", prices=[
        _unit(item.id, calls.id, "0.067", "Calls"),
        {"price": {"name": "Tokens", "item_id": item.id, "model_type": "tiered", "cadence": "monthly",
                   "billable_metric_id": tokens.id, "tiered_config": {"tiers": [
                       {"first_unit": 0, "last_unit": 100, "unit_amount": "0.01"},
                       {"first_unit": 100, "last_unit": None, "unit_amount": "0.005"}]}}},
        {"price": {"name": "Regions", "item_id": item.id, "model_type": "matrix", "cadence": "monthly",
                   "billable_metric_id": regions.id, "matrix_config": {
                       "dimensions": ["region"], "default_unit_amount": "0.015",
                       "matrix_values": [{"dimension_values": ["us"], "unit_amount": "0.01"}]}}},
        {"price": {"name": "Bundle", "item_id": item.id, "model_type": "package", "cadence": "monthly",
                   "billable_metric_id": calls.id, "package_config": {"package_amount": "0.80", "package_size": 10}}},
        {"price": {"name": "Platform", "item_id": item.id, "model_type": "unit", "cadence": "monthly",
                   "billed_in_advance": True, "fixed_price_quantity": 1, "unit_config": {"unit_amount": "10.00"}}},
    ])
    assert plan.version == 1 and len(plan.prices) == 5
    assert orb_client.plans.fetch(plan.id).name == "Pro"
    v2 = orb_client.beta.create_plan_version(plan.id, version=2, add_prices=[_unit(item.id, calls.id, "0.001", "Extra")])
    assert v2.version == 2
    orb_client.beta.set_default_plan_version(plan.id, version=2)
    assert orb_client.plans.fetch(plan.id).version == 2
    assert orb_client.beta.fetch_plan_version("1", plan_id=plan.id).version == 1

    sub = orb_client.subscriptions.create(customer_id=customer.id, plan_id=plan.id, plan_version_number=1,
                                          start_date=period_start)
    assert sub.status == "active" and len(sub.price_intervals) == 5
    assert [s.id for s in orb_client.subscriptions.list(customer_id=customer.id)] == [sub.id]

    orb_client.events.ingest(events=[
        {"event_name": "api_call", "idempotency_key": f"e{i}", "external_customer_id": "acme",
         "timestamp": minutes_ago, "properties": {"tokens": 3, "region": "us" if i % 2 else "eu"}}
        for i in range(55)
    ])

    costs = orb_client.subscriptions.fetch_costs(sub.id).data[0]
    per_price = {c.price.name: c.total for c in costs.per_price_costs}
    # Calls 55 × 0.067 = 3.685 → 3.69; tokens 165: 1.00 + 0.325 → 1.33; regions 27 × 0.01 + 28 × 0.015 = 0.69;
    # bundle 6 × 0.80 = 4.80; platform 10.00 in advance.
    assert per_price == {"Calls": "3.69", "Tokens": "1.33", "Regions": "0.69", "Bundle": "4.80", "Platform": "10.00"}
    assert costs.total == "20.51"
    assert Decimal(costs.model_extra["total_unrounded"]) == Decimal("20.500")
    assert orb_client.customers.costs.list(customer.id).data[0].total == "20.51"
    assert orb_client.customers.costs.list_by_external_id("acme").data[0].total == "20.51"

    upcoming = orb_client.invoices.fetch_upcoming(subscription_id=sub.id)
    assert upcoming.total == "20.51" and upcoming.customer.id == customer.id
    regions_line = next(line for line in upcoming.line_items if line.name == "Regions")
    assert len(regions_line.sub_line_items) == 2

    cheaper = orb_client.plans.create(currency="USD", name="Lite", prices=[_unit(item.id, calls.id, "0.01", "Calls")])
    changed = orb_client.subscriptions.schedule_plan_change(sub.id, change_option="immediate", plan_id=cheaper.id)
    assert changed.plan.id == cheaper.id
    orb_client.events.ingest(events=[
        {"event_name": "api_call", "idempotency_key": f"late{i}", "customer_id": customer.id,
         "timestamp": datetime.now(timezone.utc) + timedelta(seconds=1), "properties": {"tokens": 1}}
        for i in range(10)])
    after = orb_client.invoices.fetch_upcoming(subscription_id=sub.id)
    lines = sorted((line.name, line.amount) for line in after.line_items)
    assert ("Calls", "0.10") in lines and ("Calls", "3.69") in lines

    usage = orb_client.subscriptions.fetch_usage(sub.id, timeframe_start=period_start)
    assert any(u.billable_metric.id == calls.id for u in usage.data)

    canceled = orb_client.subscriptions.cancel(sub.id, cancel_option="end_of_subscription_term")
    assert canceled.end_date is not None and canceled.end_date.day == 1
    with pytest.raises(orb.BadRequestError):
        orb_client.subscriptions.cancel(sub.id, cancel_option="requested_date")
