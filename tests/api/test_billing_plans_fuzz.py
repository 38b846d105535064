"""Fuzz the pricing side of the billing API: any JSON body gets a 2xx or a clear 4xx, never a 500."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=8),
                    st.sampled_from(["1", "0.5", "-1", "1e400", "NaN", "2026-03-01T00:00:00Z", "immediate",
                                     "unit", "tiered", "matrix", "monthly", "USD"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
KEYS = ["name", "currency", "prices", "price", "model_type", "unit_config", "unit_amount", "tiers", "cadence",
        "item_id", "customer_id", "plan_id", "start_date", "end_date", "add_prices", "remove_prices",
        "replace_prices", "add_adjustments", "adjustment", "adjustment_type", "cancel_option", "change_option",
        "change_date", "add", "edit", "price_interval_id", "version", "metadata", "billing_cycle_anchor_configuration"]
bodies = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
PATHS = ["/v1/plans", "/v1/items", "/v1/subscriptions", "/v1/subscriptions/sub_x/cancel",
         "/v1/subscriptions/sub_x/schedule_plan_change", "/v1/subscriptions/sub_x/price_intervals",
         "/v1/plans/plan_x/versions", "/v1/plans/plan_x/set_default_version", "/v1/invoices/inv_x/issue"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=bodies)
def test_no_body_gives_a_500(client, auth_headers, path, body):  # type: ignore[no-untyped-def]
    """Whatever the body, the answer is a 2xx or a JSON 4xx with Orb's error shape."""
    response = client.post(path, json=body, headers=auth_headers)
    assert response.status_code < 500, (path, body, response.json)
    if response.status_code >= 400:
        assert {"type", "status", "title", "detail"} <= set(response.json)


@pytest.mark.parametrize("path", ["/v1/invoices/upcoming", "/v1/subscriptions/x/costs?timeframe_start=nope",
                                  "/v1/subscriptions/x/usage?granularity=hour", "/v1/invoices?limit=0",
                                  "/v1/plans?cursor=%%%", "/v1/customers/x/costs", "/v1/plans/x/versions/1"])
def test_bad_queries_are_4xx(client, auth_headers, path):  # type: ignore[no-untyped-def]
    """Bad query strings and unknown ids get a 4xx."""
    assert 400 <= client.get(path, headers=auth_headers).status_code < 500


@pytest.fixture
def base(app, client, auth_headers):  # type: ignore[no-untyped-def]
    """Store a customer, an item, a plan and a subscription; return their ids."""
    from datetime import UTC, datetime

    from billing_core.customers import create_customer
    from billing_core.persistence.customers import SqlCustomerRepository
    from worker.db import session_scope

    with session_scope(app.extensions["marketsync"].engine) as s:
        create_customer(SqlCustomerRepository(s), customer_id="cus_1", name="A", email="a@a.test", currency="USD",
                        now=datetime(2026, 1, 1, tzinfo=UTC))
    item = client.post("/v1/items", json={"name": "API"}, headers=auth_headers).json["id"]
    plan = client.post("/v1/plans", headers=auth_headers, json={"name": "P", "currency": "USD", "prices": [
        {"price": {"name": "Fee", "item_id": item, "model_type": "unit", "cadence": "monthly",
                   "unit_config": {"unit_amount": "5"}}}]}).json
    sub = client.post("/v1/subscriptions", headers=auth_headers,
                      json={"customer_id": "cus_1", "plan_id": plan["id"]}).json
    return {"item": item, "plan": plan["id"], "price": plan["prices"][0]["id"], "sub": sub["id"],
            "interval": sub["price_intervals"][0]["id"]}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_valid_ids_with_fuzzed_fields(client, auth_headers, base, data):  # type: ignore[no-untyped-def]
    """Requests naming real objects but carrying fuzzed fields never give a 500."""
    ids = st.sampled_from([base["item"], base["plan"], base["price"], base["interval"], "cus_1", "nope"])
    leaf = st.one_of(values, ids)
    price = st.fixed_dictionaries({"name": st.just("X"), "item_id": ids, "model_type": st.sampled_from(
        ["unit", "tiered", "bulk", "package", "tiered_package", "matrix"]), "cadence": st.sampled_from(
        ["monthly", "annual", "one_time"])}, optional={"billable_metric_id": leaf, "unit_config": leaf,
                                                       "tiered_config": leaf, "package_config": leaf,
                                                       "fixed_price_quantity": leaf, "billed_in_advance": leaf})
    entry = st.fixed_dictionaries({}, optional={"price": price, "price_id": ids, "start_date": leaf,
                                                "end_date": leaf, "price_interval_id": ids,
                                                "replaces_price_id": ids, "adjustment": leaf})
    path, required = data.draw(st.sampled_from([
        ("/v1/subscriptions", {"customer_id": "cus_1", "plan_id": base["plan"]}),
        (f"/v1/subscriptions/{base['sub']}/price_intervals", {}),
        (f"/v1/subscriptions/{base['sub']}/schedule_plan_change", {"plan_id": base["plan"]}),
        (f"/v1/subscriptions/{base['sub']}/cancel", {}),
        (f"/v1/plans/{base['plan']}/versions", {"version": 2}),
    ]))
    extra = data.draw(st.dictionaries(st.sampled_from(
        ["add", "edit", "add_prices", "remove_prices", "replace_prices", "add_adjustments", "start_date",
         "end_date", "cancel_option", "change_option", "change_date", "cancellation_date",
         "billing_cycle_anchor_configuration"]),
        st.one_of(st.lists(entry, max_size=2), leaf), max_size=3))
    response = client.post(path, json={**required, **extra}, headers=auth_headers)
    assert response.status_code < 500, (path, extra, response.json)
