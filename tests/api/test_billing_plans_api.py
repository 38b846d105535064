"""The billing API for items, plans, subscriptions, costs and invoices (Flask test client)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing_core.customers import create_customer
from billing_core.events import ingest_events
from billing_core.metrics import create_metric
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import SqlEventStore
from billing_core.persistence.metrics import SqlMetricRepository
from worker.db import session_scope

NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)


@pytest.fixture
def clock(app):  # type: ignore[no-untyped-def]
    """Install a settable clock on the app; returns a one-element list holding 'now'."""
    current = [NOW]
    app.extensions["billing_clock"] = lambda: current[0]
    return current


@pytest.fixture
def setup(app, clock):  # type: ignore[no-untyped-def]
    """Store a customer and two metrics; return a function that ingests events."""
    engine = app.extensions["marketsync"].engine
    with session_scope(engine) as s:
        create_customer(SqlCustomerRepository(s), customer_id="cus_1", name="Acme", email="ops@acme.test",
                        external_customer_id="acme", currency="USD", now=NOW - timedelta(days=90))
        create_metric(SqlMetricRepository(s), metric_id="m_calls", name="Calls", now=NOW - timedelta(days=90),
                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
        create_metric(SqlMetricRepository(s), metric_id="m_tokens", name="Tokens", now=NOW - timedelta(days=90),
                      sql="SELECT SUM(tokens) FROM events WHERE event_name = 'api_call'")

    def ingest(*events):
        with session_scope(engine) as s:
            ingest_events(SqlEventStore(s), list(events), now=clock[0])
    return ingest


def call(key, ts, **props):
    return {"idempotency_key": key, "customer_id": "cus_1", "event_name": "api_call",
            "timestamp": ts.isoformat(), "properties": props}


def _plan(client, auth_headers, item_id, **extra):
    body = {"name": "Pro", "currency": "USD", "prices": [
        {"price": {"name": "Calls", "item_id": item_id, "model_type": "unit", "cadence": "monthly",
                   "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.067"}}},
        {"price": {"name": "Tokens", "item_id": item_id, "model_type": "tiered", "cadence": "monthly",
                   "billable_metric_id": "m_tokens", "tiered_config": {"tiers": [
                       {"first_unit": 0, "last_unit": 10, "unit_amount": "0.50"},
                       {"first_unit": 10, "last_unit": None, "unit_amount": "0.10"}]}}},
        {"price": {"name": "Platform fee", "item_id": item_id, "model_type": "unit", "cadence": "monthly",
                   "billed_in_advance": True, "fixed_price_quantity": 1, "unit_config": {"unit_amount": "31.00"}}},
    ], **extra}
    response = client.post("/v1/plans", json=body, headers=auth_headers)
    assert response.status_code == 201, response.json
    return response.json


@pytest.fixture
def item(client, auth_headers, setup):  # type: ignore[no-untyped-def]
    response = client.post("/v1/items", json={"name": "API"}, headers=auth_headers)
    assert response.status_code == 201
    return response.json["id"]


def test_items_crud(client, auth_headers, item):  # type: ignore[no-untyped-def]
    """Items are created, fetched, renamed and listed with Orb's envelope."""
    assert client.get(f"/v1/items/{item}", headers=auth_headers).json["name"] == "API"
    assert client.put(f"/v1/items/{item}", json={"name": "Calls"}, headers=auth_headers).json["name"] == "Calls"
    listed = client.get("/v1/items?limit=1", headers=auth_headers).json
    assert [i["id"] for i in listed["data"]] == [item]
    assert listed["pagination_metadata"] == {"has_more": False, "next_cursor": None}
    assert client.get("/v1/items/nope", headers=auth_headers).status_code == 404


def test_plan_versions_and_default(client, auth_headers, item):  # type: ignore[no-untyped-def]
    """A plan is created with prices; a new version keeps price keys; the default version moves."""
    plan = _plan(client, auth_headers, item, external_plan_id="pro")
    assert plan["version"] == 1 and [p["model_type"] for p in plan["prices"]] == ["unit", "tiered", "unit"]
    assert plan["prices"][0]["unit_config"] == {"unit_amount": "0.067"}
    calls = plan["prices"][0]
    v2 = client.post(f"/v1/plans/{plan['id']}/versions", headers=auth_headers, json={
        "version": 2, "replace_prices": [{"replaces_price_id": calls["id"], "price": {
            "name": "Calls", "item_id": item, "model_type": "unit", "cadence": "monthly",
            "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.05"}}}]})
    assert v2.status_code == 201, v2.json
    assert v2.json["version"] == 2 and v2.json["prices"][0]["price_key"] == calls["price_key"]
    assert client.get(f"/v1/plans/{plan['id']}", headers=auth_headers).json["version"] == 1
    moved = client.post(f"/v1/plans/{plan['id']}/set_default_version", json={"version": 2}, headers=auth_headers)
    assert moved.json["version"] == 2
    assert client.get("/v1/plans/external_plan_id/pro", headers=auth_headers).json["id"] == plan["id"]
    versions = client.get(f"/v1/plans/{plan['id']}/versions", headers=auth_headers).json["data"]
    assert [v["version"] for v in versions] == [1, 2]
    assert client.get(f"/v1/plans/{plan['id']}/versions/1", headers=auth_headers).json["prices"][0]["id"] == calls["id"]
    clash = client.post(f"/v1/plans/{plan['id']}/versions", json={"version": 5}, headers=auth_headers)
    assert clash.status_code == 409


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        pytest.param({"currency": None}, "currency", id="missing-currency"),
        pytest.param({"prices": []}, "prices", id="no-prices"),
        pytest.param({"prices": [{"price": {"name": "x", "item_id": "i", "model_type": "volume", "cadence": "monthly"}}]},
                     "prices[0].price.model_type", id="unknown-model"),
        pytest.param({"prices": [{"price": {"name": "x", "item_id": "i", "model_type": "tiered", "cadence": "monthly",
                                            "billable_metric_id": "m_calls", "tiered_config": {"tiers": [
                                                {"first_unit": 5, "unit_amount": "1"}]}}}]},
                     "prices[0].price.tiered_config.tiers", id="bad-tiers"),
        pytest.param({"prices": [{"price": {"name": "x", "item_id": "i", "model_type": "unit", "cadence": "weekly",
                                            "unit_config": {"unit_amount": "1"}}}]}, "prices[0].price.cadence", id="bad-cadence"),
        pytest.param({"colour": "red"}, "colour", id="unknown-field"),
    ],
)
def test_plan_create_rejects(client, auth_headers, item, patch, field):  # type: ignore[no-untyped-def]
    """Invalid plans get a 400 naming the offending field."""
    body = {"name": "Pro", "currency": "USD", "prices": [{"price": {
        "name": "Calls", "item_id": item, "model_type": "unit", "cadence": "monthly",
        "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "1"}}}]}
    body.update(patch)
    response = client.post("/v1/plans", json=body, headers=auth_headers)
    assert response.status_code == 400, response.json
    assert response.json["validation_errors"][0]["field"].startswith(field)


def test_subscription_costs_upcoming_change_and_cancel(client, auth_headers, item, setup, clock):  # type: ignore[no-untyped-def]
    """Subscribe, read costs and the upcoming invoice, change plan mid-period, then cancel."""
    plan = _plan(client, auth_headers, item)
    created = client.post("/v1/subscriptions", headers=auth_headers, json={
        "external_customer_id": "acme", "plan_id": plan["id"], "start_date": "2026-03-01T00:00:00Z"})
    assert created.status_code == 201, created.json
    sub = created.json
    assert sub["status"] == "active" and sub["current_billing_period_start_date"] == "2026-03-01T00:00:00Z"
    assert len(sub["price_intervals"]) == 3 and sub["customer"]["id"] == "cus_1"

    setup(*[call(f"c{i}", datetime(2026, 3, 10, tzinfo=UTC), tokens=1) for i in range(55)])
    costs = client.get(f"/v1/subscriptions/{sub['id']}/costs", headers=auth_headers).json["data"][0]
    # 55 × 0.067 = 3.685 → 3.69; 55 tokens = 5.00 + 4.50; fee 31.00 in advance.
    assert (costs["total"], costs["total_unrounded"]) == ("44.19", "44.185")
    assert costs["timeframe_start"] == "2026-03-01T00:00:00Z"
    by_cust = client.get("/v1/customers/external_customer_id/acme/costs", headers=auth_headers).json
    assert by_cust["data"][0]["total"] == "44.19"

    upcoming = client.get(f"/v1/invoices/upcoming?subscription_id={sub['id']}", headers=auth_headers).json
    assert upcoming["total"] == "44.19" and upcoming["target_date"] == "2026-04-01T00:00:00Z"
    tiered = next(l for l in upcoming["line_items"] if l["name"] == "Tokens")
    assert [s["amount"] for s in tiered["sub_line_items"]] == ["5.00", "4.50"]
    assert tiered["trace"]["event_count"] == 55 and tiered["trace"]["plan_version"] == 1

    cheaper = client.post("/v1/plans", headers=auth_headers, json={"name": "Lite", "currency": "USD", "prices": [
        {"price": {"name": "Calls", "item_id": item, "model_type": "unit", "cadence": "monthly",
                   "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.01"}}}]}).json
    changed = client.post(f"/v1/subscriptions/{sub['id']}/schedule_plan_change", headers=auth_headers, json={
        "change_option": "requested_date", "change_date": "2026-03-15T00:00:00Z", "plan_id": cheaper["id"]})
    assert changed.status_code == 200, changed.json
    setup(*[call(f"d{i}", datetime(2026, 3, 16, tzinfo=UTC)) for i in range(100)])
    upcoming = client.get(f"/v1/invoices/upcoming?subscription_id={sub['id']}", headers=auth_headers).json
    names = sorted((l["name"], l["amount"]) for l in upcoming["line_items"])
    # The fee was in advance for the whole month (refund appears only once issued), usage split at the 15th.
    assert ("Calls", "1.00") in names and ("Calls", "3.69") in names

    canceled = client.post(f"/v1/subscriptions/{sub['id']}/cancel", headers=auth_headers,
                           json={"cancel_option": "end_of_subscription_term"})
    assert canceled.json["end_date"] == "2026-04-01T00:00:00Z"
    usage = client.get(f"/v1/subscriptions/{sub['id']}/usage?timeframe_start=2026-03-10T00:00:00Z"
                       "&timeframe_end=2026-03-12T00:00:00Z", headers=auth_headers).json["data"]
    calls = next(u for u in usage if u["billable_metric"]["id"] == "m_calls")
    assert [d["quantity"] for d in calls["usage"]] == [55, 0]


def test_issue_and_correction(client, auth_headers, item, setup, clock):  # type: ignore[no-untyped-def]
    """An issued invoice is a snapshot; late usage appears as a correction on the next invoice."""
    plan = _plan(client, auth_headers, item)
    sub = client.post("/v1/subscriptions", headers=auth_headers, json={
        "customer_id": "cus_1", "plan_id": plan["id"], "start_date": "2026-02-01T00:00:00Z",
        "remove_prices": [{"price_id": plan["prices"][1]["id"]}, {"price_id": plan["prices"][2]["id"]}]}).json
    setup(*[call(f"f{i}", datetime(2026, 2, 10, tzinfo=UTC)) for i in range(5)])
    listed = client.get(f"/v1/invoices?subscription_id={sub['id']}", headers=auth_headers).json["data"]
    feb = next(i for i in listed if i["period_start"] == "2026-02-01T00:00:00Z")
    issued = client.post(f"/v1/invoices/{feb['id']}/issue", headers=auth_headers).json
    assert issued["status"] == "issued" and issued["total"] == "0.34"
    setup(*[call(f"g{i}", datetime(2026, 2, 20, tzinfo=UTC)) for i in range(3)])
    assert client.get(f"/v1/invoices/{feb['id']}", headers=auth_headers).json["total"] == "0.34"
    upcoming = client.get(f"/v1/invoices/upcoming?subscription_id={sub['id']}", headers=auth_headers).json
    (correction,) = [l for l in upcoming["line_items"] if l["kind"] == "correction"]
    assert (correction["quantity"], correction["amount"]) == (3, "0.20")
    again = client.post(f"/v1/invoices/{feb['id']}/issue", headers=auth_headers).json
    assert again["total"] == "0.34"


def test_negotiated_rate_via_price_intervals(client, auth_headers, item, setup):  # type: ignore[no-untyped-def]
    """A price interval edit plus a new interval re-prices usage from a past date."""
    plan = _plan(client, auth_headers, item)
    sub = client.post("/v1/subscriptions", headers=auth_headers, json={
        "customer_id": "cus_1", "plan_id": plan["id"], "start_date": "2026-03-01T00:00:00Z"}).json
    calls = next(i for i in sub["price_intervals"] if i["price"]["name"] == "Calls")
    response = client.post(f"/v1/subscriptions/{sub['id']}/price_intervals", headers=auth_headers, json={
        "edit": [{"price_interval_id": calls["id"], "end_date": "2026-03-10T00:00:00Z"}],
        "add": [{"start_date": "2026-03-10T00:00:00Z", "price": {
            "name": "Calls (deal)", "item_id": item, "model_type": "unit", "cadence": "monthly", "currency": "USD",
            "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.001"}}}]})
    assert response.status_code == 200, response.json
    setup(*[call(f"h{i}", datetime(2026, 3, 5 + i, tzinfo=UTC)) for i in range(10)])
    costs = client.get(f"/v1/subscriptions/{sub['id']}/costs", headers=auth_headers).json["data"][0]
    per = {p["price"]["name"]: p["total"] for p in costs["per_price_costs"]}
    assert per["Calls"] == "0.34" and per["Calls (deal)"] == "0.01"


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        pytest.param("/v1/subscriptions", {"plan_id": "x"}, 400, "customer_id", id="no-customer"),
        pytest.param("/v1/subscriptions", {"customer_id": "cus_1", "plan_id": "nope"}, 404, "plan_id", id="unknown-plan"),
        pytest.param("/v1/subscriptions", {"customer_id": "cus_1", "plan_id": "x", "coupon": "y"}, 400, "coupon", id="unknown-field"),
        pytest.param("/v1/subscriptions/nope/cancel", {"cancel_option": "immediate"}, 404, "subscription_id", id="unknown-subscription"),
    ],
)
def test_subscription_errors(client, auth_headers, setup, path, body, status, field):  # type: ignore[no-untyped-def]
    """Bad subscription requests get a clear 4xx naming the field."""
    response = client.post(path, json=body, headers=auth_headers)
    assert response.status_code == status, response.json
    assert response.json["validation_errors"][0]["field"] == field


def test_requires_api_key(client):  # type: ignore[no-untyped-def]
    """Every billing route requires the API key."""
    assert client.get("/v1/plans").status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"metadata": "x"}, "metadata", id="metadata-not-object"),
        pytest.param({"prices": [{"price": {"name": "x", "item_id": "i", "model_type": "unit", "cadence": "monthly",
                                            "metadata": [1], "unit_config": {"unit_amount": "1"}}}]},
                     "prices[0].price.metadata", id="price-metadata-not-object"),
        pytest.param({"prices": [{"price": {"name": "x", "item_id": "i", "model_type": "unit", "cadence": "monthly",
                                            "unit_config": {"unit_amount": "1e99999"}}}]},
                     "prices[0].price.unit_config.unit_amount", id="amount-out-of-range"),
        pytest.param({"prices": ["x"]}, "prices[0]", id="price-not-object"),
    ],
)
def test_plan_malformed_bodies_are_400(client, auth_headers, setup, body, field):  # type: ignore[no-untyped-def]
    """Malformed plan bodies get a 400 naming the field, never a 500."""
    payload = {"name": "Pro", "currency": "USD", "prices": [{"price": {
        "name": "x", "item_id": "i", "model_type": "unit", "cadence": "monthly", "unit_config": {"unit_amount": "1"}}}]}
    payload.update(body)
    response = client.post("/v1/plans", json=payload, headers=auth_headers)
    assert response.status_code == 400, response.json
    assert response.json["validation_errors"][0]["field"].startswith(field)


def test_tier_bounds_are_exact_json_numbers(client, auth_headers, item):  # type: ignore[no-untyped-def]
    """Tier bounds come back as JSON numbers with every digit (no float), whole or fractional."""
    body = {"name": "Big", "currency": "USD", "prices": [{"price": {
        "name": "Tokens", "item_id": item, "model_type": "tiered", "cadence": "monthly",
        "billable_metric_id": "m_tokens", "tiered_config": {"tiers": [
            {"first_unit": 0, "last_unit": 12345678901234567891, "unit_amount": "0.50"},
            {"first_unit": 12345678901234567891, "last_unit": None, "unit_amount": "0.10"}]}}}]}
    created = client.post("/v1/plans", json=body, headers=auth_headers)
    assert created.status_code == 201, created.json
    text = client.get(f"/v1/plans/{created.json['id']}", headers=auth_headers).get_data(as_text=True)
    assert '"last_unit":12345678901234567891' in text and '"first_unit":12345678901234567891' in text
    body["prices"][0]["price"]["tiered_config"]["tiers"] = [
        {"first_unit": 0, "last_unit": "1000.5", "unit_amount": "0.50"},
        {"first_unit": "1000.5", "last_unit": None, "unit_amount": "0.10"}]
    fractional = client.post("/v1/plans", json=body, headers=auth_headers)
    assert fractional.status_code == 201, fractional.json
    assert '"last_unit":1000.5' in fractional.get_data(as_text=True)


def test_usage_beyond_the_range_is_a_422_for_its_customer_only(client, auth_headers, item, setup, clock, app):  # type: ignore[no-untyped-def]
    """Costs and upcoming invoices of a customer whose usage is beyond the range answer 422 naming it;
    the invoice list still lists everyone else and names the subscription it could not compute."""
    plan = _plan(client, auth_headers, item)
    engine = app.extensions["marketsync"].engine
    with session_scope(engine) as s:
        create_customer(SqlCustomerRepository(s), customer_id="cus_2", name="Globex", email="ops@globex.test",
                        external_customer_id="globex", currency="USD", now=NOW - timedelta(days=90))
    subs = {}
    for customer in ("acme", "globex"):
        created = client.post("/v1/subscriptions", headers=auth_headers, json={
            "external_customer_id": customer, "plan_id": plan["id"], "start_date": "2026-03-01T00:00:00Z"})
        assert created.status_code == 201, created.json
        subs[customer] = created.json["id"]
    heavy = [call(f"big{i}", NOW - timedelta(hours=1, seconds=i), tokens=999_999_999_999_999) for i in range(1001)]
    for at in range(0, len(heavy), 500):  # acme's tokens total ~1.001e18: beyond the 10^18 a sum may reach
        setup(*heavy[at:at + 500])
    setup(dict(call("small", NOW - timedelta(hours=1), tokens=5), customer_id="cus_2"))
    costs = client.get(f"/v1/subscriptions/{subs['acme']}/costs", headers=auth_headers)
    assert costs.status_code == 422 and "customer 'cus_1'" in costs.json["detail"] and "m_tokens" in costs.json["detail"]
    upcoming = client.get(f"/v1/invoices/upcoming?subscription_id={subs['acme']}", headers=auth_headers)
    assert upcoming.status_code == 422
    assert client.get(f"/v1/subscriptions/{subs['globex']}/costs", headers=auth_headers).status_code == 200
    listed = client.get("/v1/invoices", headers=auth_headers)
    assert listed.status_code == 200
    assert {inv["subscription"]["id"] for inv in listed.json["data"]} == {subs["globex"]}
    assert listed.headers["X-Marketsync-Unavailable-Subscriptions"] == subs["acme"]
