"""The official ``orb-billing`` client evaluates prices against a live server: existing and inline
prices over stored usage (filtered, grouped, matrix), over preview events, and bad input refused."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import orb
import pytest

from tests.conftest import TEST_API_KEY


@pytest.fixture
def orb_client(live_server) -> orb.Orb:  # type: ignore[no-untyped-def]
    """Return the Orb client pointed at the live test server."""
    return orb.Orb(base_url=f"{live_server.url}/v1", api_key=TEST_API_KEY, max_retries=0)


@pytest.fixture
def catalog(orb_client: orb.Orb) -> dict:
    """An item, two metrics, a customer with 30 calls yesterday and a plan with three prices."""
    item = orb_client.items.create(name="API")
    calls = orb_client.metrics.create(name="Calls", description=None, item_id=item.id,
                                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
    tokens = orb_client.metrics.create(name="Tokens", description=None, item_id=item.id,
                                       sql="SELECT SUM(tokens) FROM events WHERE event_name = 'api_call'")
    customer = orb_client.customers.create(name="Acme", email="ops@acme.test", external_customer_id="acme",
                                           currency="USD")
    plan = orb_client.plans.create(currency="USD", name="Pro", prices=[
        {"price": {"name": "Calls", "item_id": item.id, "model_type": "unit", "cadence": "monthly",
                   "billable_metric_id": calls.id, "unit_config": {"unit_amount": "0.067"},
                   "external_price_id": "calls-v1"}},
        {"price": {"name": "Regions", "item_id": item.id, "model_type": "matrix", "cadence": "monthly",
                   "billable_metric_id": calls.id, "matrix_config": {
                       "dimensions": ["region"], "default_unit_amount": "0.015",
                       "matrix_values": [{"dimension_values": ["us"], "unit_amount": "0.01"}]}}},
        {"price": {"name": "Platform", "item_id": item.id, "model_type": "unit", "cadence": "monthly",
                   "fixed_price_quantity": 1, "unit_config": {"unit_amount": "10.00"}}},
    ])
    start = (datetime.now(timezone.utc) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    orb_client.events.ingest(events=[
        {"event_name": "api_call", "idempotency_key": f"e{i}", "external_customer_id": "acme",
         "timestamp": start + timedelta(minutes=i),
         "properties": {"tokens": i, "region": "us" if i % 3 == 0 else "eu", "tier": "gold" if i < 10 else "std"}}
        for i in range(30)
    ])
    prices = {p.name: p for p in plan.prices}
    return {"item": item, "calls": calls, "tokens": tokens, "customer": customer, "prices": prices,
            "start": start, "end": start + timedelta(days=1)}


def test_evaluate_existing_and_inline_prices(orb_client: orb.Orb, catalog: dict) -> None:
    """Existing prices by id and external id, and an inline price, rate the customer's usage in the timeframe."""
    c = catalog
    answer = orb_client.prices.evaluate_multiple(
        timeframe_start=c["start"], timeframe_end=c["end"], external_customer_id="acme",
        price_evaluations=[
            {"price_id": c["prices"]["Calls"].id},
            {"external_price_id": "calls-v1", "filter": "tier = 'gold'"},
            {"price_id": c["prices"]["Calls"].id, "grouping_keys": ["region"]},
            {"price_id": c["prices"]["Regions"].id},
            {"price": {"name": "Tokens", "item_id": c["item"].id, "model_type": "tiered", "cadence": "monthly",
                       "currency": "USD", "billable_metric_id": c["tokens"].id, "tiered_config": {"tiers": [
                           {"first_unit": 0, "last_unit": 100, "unit_amount": "0.01"},
                           {"first_unit": 100, "last_unit": None, "unit_amount": "0.005"}]}}},
        ])
    calls, gold, by_region, matrix, tokens = answer.data
    # 30 calls × 0.067 = 2.01
    assert calls.price_id == c["prices"]["Calls"].id and calls.currency == "USD"
    assert [(g.grouping_values, g.quantity, g.amount) for g in calls.price_groups] == [([], 30, "2.01")]
    # 10 gold calls × 0.067 = 0.67
    assert gold.external_price_id == "calls-v1" and gold.price_groups[0].quantity == 10
    assert gold.price_groups[0].amount == "0.67"
    # eu: 20 calls (1.34), us: 10 calls (0.67)
    assert [(g.grouping_values, g.quantity, g.amount) for g in by_region.price_groups] == [
        (["eu"], 20, "1.34"), (["us"], 10, "0.67")]
    # matrix: 10 × 0.01 + 20 × 0.015 = 0.40
    assert matrix.price_groups[0].amount == "0.40"
    # tokens 0..29 sum to 435: 100 × 0.01 + 335 × 0.005 = 2.675 → 2.68
    assert tokens.inline_price_index == 4 and tokens.price_id is None
    assert (tokens.price_groups[0].quantity, tokens.price_groups[0].amount) == (435, "2.68")

    outside = orb_client.prices.evaluate_multiple(
        timeframe_start=c["end"], timeframe_end=c["end"] + timedelta(hours=1), customer_id=c["customer"].id,
        price_evaluations=[{"price_id": c["prices"]["Calls"].id}, {"price_id": c["prices"]["Calls"].id,
                                                                   "grouping_keys": ["region"]}])
    assert outside.data[0].price_groups[0].amount == "0.00" and outside.data[1].price_groups == []


def test_evaluate_one_price(orb_client: orb.Orb, catalog: dict) -> None:
    """The single-price call (``prices.evaluate``) answers the groups of one existing price."""
    c = catalog
    answer = orb_client.prices.evaluate(c["prices"]["Calls"].id, timeframe_start=c["start"], timeframe_end=c["end"],
                                        customer_id=c["customer"].id, filter="tier = 'std'", grouping_keys=["region"])
    assert [(g.grouping_values, g.quantity, g.amount) for g in answer.data] == [(["eu"], 14, "0.94"), (["us"], 6, "0.40")]
    with pytest.raises(orb.NotFoundError):
        orb_client.prices.evaluate("price_nope", timeframe_start=c["start"], timeframe_end=c["end"],
                                   customer_id=c["customer"].id)
    with pytest.raises(orb.BadRequestError, match="price_id: price .* is a fixed fee"):
        orb_client.prices.evaluate(c["prices"]["Platform"].id, timeframe_start=c["start"], timeframe_end=c["end"],
                                   customer_id=c["customer"].id)
    with pytest.raises(orb.BadRequestError, match="filter: "):
        orb_client.prices.evaluate(c["prices"]["Calls"].id, timeframe_start=c["start"], timeframe_end=c["end"],
                                   customer_id=c["customer"].id, filter="tier ==")


def test_evaluate_preview_events(orb_client: orb.Orb, catalog: dict) -> None:
    """Preview events stand in for stored usage; events of other customers are left out."""
    c = catalog
    later = datetime.now(timezone.utc) + timedelta(days=30)
    events = [{"event_name": "api_call", "timestamp": later + timedelta(minutes=i),
               "properties": {"tokens": 2, "region": "us"}} for i in range(7)]
    events.append({"event_name": "api_call", "timestamp": later, "external_customer_id": "someone-else",
                   "properties": {"tokens": 2}})
    answer = orb_client.prices.evaluate_preview_events(
        timeframe_start=later, timeframe_end=later + timedelta(days=1), customer_id=c["customer"].id,
        events=events,
        price_evaluations=[{"price_id": c["prices"]["Calls"].id, "grouping_keys": ["region"]},
                           {"price_id": c["prices"]["Regions"].id}])
    assert [(g.grouping_values, g.quantity, g.amount) for g in answer.data[0].price_groups] == [(["us"], 7, "0.47")]
    assert answer.data[1].price_groups[0].amount == "0.07"
    # Stored usage is not read: yesterday's 30 calls are not in a preview.
    empty = orb_client.prices.evaluate_preview_events(
        timeframe_start=c["start"], timeframe_end=c["end"], customer_id=c["customer"].id, events=[],
        price_evaluations=[{"price_id": c["prices"]["Calls"].id}])
    assert empty.data[0].price_groups[0].quantity == 0


@pytest.mark.parametrize("change, field", [
    ({"price_evaluations": []}, "price_evaluations"),
    ({"price_evaluations": [{}]}, "price_evaluations[0]"),
    ({"price_evaluations": [{"price_id": "CALLS"}] * 101}, "price_evaluations"),
    ({"price_evaluations": [{"price_id": "CALLS", "external_price_id": "calls-v1"}]}, "price_evaluations[0]"),
    ({"price_evaluations": [{"price_id": "CALLS", "metric_parameter_overrides": {"a": 1}}]},
     "price_evaluations[0].metric_parameter_overrides"),
    ({"price_evaluations": [{"price_id": "nope"}]}, "price_evaluations[0].price_id"),
    ({"price_evaluations": [{"price_id": "CALLS", "filter": "tier = "}]}, "price_evaluations[0].filter"),
    ({"price_evaluations": [{"price_id": "CALLS", "filter": "x = 1) OR (event_name = 'y'"}]},
     "price_evaluations[0].filter"),
    ({"price_evaluations": [{"price_id": "CALLS", "grouping_keys": ["a", "b", "c"]}]},
     "price_evaluations[0].grouping_keys"),
    ({"price_evaluations": [{"price_id": "PLATFORM"}]}, "price_evaluations[0]"),
    ({"price_evaluations": [{"price": {"name": "X", "item_id": "i", "model_type": "unit", "cadence": "monthly",
                                       "currency": "USD", "billable_metric_id": "missing",
                                       "unit_config": {"unit_amount": "1"}}}]},
     "price_evaluations[0].price.billable_metric_id"),
    ({"timeframe_end": "2020-01-01T00:00:00Z"}, "timeframe_end"),
    ({"customer_id": None}, "customer_id"),
    ({"events": [{"event_name": "api_call", "timestamp": "2026-01-01T00:00:00Z", "properties": {}}] * 501},
     "events"),
    ({"events": [{"event_name": "api_call", "timestamp": "not a time", "properties": {}}]}, "events[0]"),
])
def test_bad_input_names_the_field(client, auth_headers, catalog: dict, change: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    """Bad evaluation bodies are a 400 naming the field (preview-only fields on the preview route)."""
    c = catalog
    body = {"timeframe_start": c["start"].isoformat(), "timeframe_end": c["end"].isoformat(),
            "customer_id": c["customer"].id, "price_evaluations": [{"price_id": c["prices"]["Calls"].id}]}
    names = {"CALLS": c["prices"]["Calls"].id, "PLATFORM": c["prices"]["Platform"].id}
    body.update(copy.deepcopy(change))
    for raw in body["price_evaluations"]:
        if raw.get("price_id") in names:
            raw["price_id"] = names[raw["price_id"]]
    path = "/v1/prices/evaluate_preview_events" if "events" in change else "/v1/prices/evaluate"
    answer = client.post(path, json=body, headers=auth_headers)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["detail"].startswith(f"{field}:"), answer.get_json()
