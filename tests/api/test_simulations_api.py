"""``POST /v1/simulations`` on the real database: a plan version and draft prices replayed over past
months, "current" equal to the engine's draft invoices, nothing written, and bad input refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from billing_core.customers import create_customer
from billing_core.events import ingest_events
from billing_core.metrics import create_metric
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import SqlEventStore
from billing_core.persistence.metrics import SqlMetricRepository
from worker.db import session_scope

NOW = datetime(2026, 5, 15, 12, tzinfo=UTC)
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def world(app, client, auth_headers):  # type: ignore[no-untyped-def]
    """Three customers on plan v1 since January with calls each month; v2 doubles the call price."""
    app.extensions["billing_clock"] = lambda: NOW
    engine = app.extensions["marketsync"].engine
    with session_scope(engine) as s:
        for n in range(3):
            create_customer(SqlCustomerRepository(s), customer_id=f"cus_{n}", name=f"C{n}", email=f"c{n}@x.test",
                            external_customer_id=f"ext{n}", currency="USD", now=START)
        create_metric(SqlMetricRepository(s), metric_id="m_calls", name="Calls", now=START,
                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
    with session_scope(engine) as s:
        ingest_events(SqlEventStore(s), [
            {"idempotency_key": f"e{n}-{m}-{i}", "customer_id": f"cus_{n}", "event_name": "api_call",
             "timestamp": datetime(2026, m, 10, 1, i, tzinfo=UTC).isoformat(), "properties": {}}
            for n in range(3) for m in range(1, 6) for i in range(10 * n)], now=NOW)
    item = client.post("/v1/items", json={"name": "API"}, headers=auth_headers).get_json()
    plan = client.post("/v1/plans", headers=auth_headers, json={"name": "Pro", "currency": "USD", "prices": [
        {"price": {"name": "Calls", "item_id": item["id"], "model_type": "unit", "cadence": "monthly",
                   "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.10"}}},
        {"price": {"name": "Platform", "item_id": item["id"], "model_type": "unit", "cadence": "monthly",
                   "billed_in_advance": True, "fixed_price_quantity": 1, "unit_config": {"unit_amount": "5.00"}}},
    ]}).get_json()
    calls = next(p for p in plan["prices"] if p["name"] == "Calls")
    answer = client.post(f"/v1/plans/{plan['id']}/versions", headers=auth_headers, json={
        "version": 2, "replace_prices": [{"replaces_price_id": calls["id"], "price": {
            "name": "Calls", "item_id": item["id"], "model_type": "unit", "cadence": "monthly",
            "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.20"}}}]})
    assert answer.status_code == 201, answer.get_json()
    subs = []
    for n in range(3):
        sub = client.post("/v1/subscriptions", headers=auth_headers, json={
            "customer_id": f"cus_{n}", "plan_id": plan["id"], "plan_version_number": 1,
            "start_date": START.isoformat()})
        assert sub.status_code == 201, sub.get_json()
        subs.append(sub.get_json()["id"])
    return {"plan": plan, "item": item, "calls": calls, "subs": subs, "engine": engine}


def _rows(engine) -> tuple:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar()
                     for t in ("subscriptions", "subscription_edits", "invoices", "plan_versions", "prices"))


def test_version_simulation_matches_the_engines_invoices(client, auth_headers, world) -> None:  # type: ignore[no-untyped-def]
    """February to April under v2: per customer "current" is the sum of its draft invoices; nothing is written."""
    before = _rows(world["engine"])
    answer = client.post("/v1/simulations", headers=auth_headers, json={
        "plan_id": world["plan"]["id"], "version": 2, "timeframe_start": "2026-02-01T00:00:00Z",
        "timeframe_end": "2026-05-01T00:00:00Z"})
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    assert _rows(world["engine"]) == before
    assert (result["subscriptions"], result["periods"], result["version"]) == (3, 9, 2)
    by = {c["customer_id"]: c for c in result["customers"]}
    # cus_2: 20 calls a month: 3 × (2.00 + 5.00) = 21.00 now, 3 × (4.00 + 5.00) = 27.00 under v2.
    assert (by["cus_2"]["current_total"], by["cus_2"]["simulated_total"]) == ("21.00", "27.00")
    assert by["cus_2"]["change_percent"] == "28.57"
    assert (by["cus_0"]["current_total"], by["cus_0"]["change_percent"]) == ("15.00", "0.00")
    for n, sub_id in enumerate(world["subs"]):
        total = Decimal(0)
        for month in (2, 3, 4):
            invoice = client.get(f"/v1/invoices/inv_2026{month:02d}01_{sub_id}", headers=auth_headers).get_json()
            total += Decimal(invoice["total"])
        assert Decimal(by[f"cus_{n}"]["current_total"]) == total
    assert result["current_total"] == "54.00" and result["simulated_total"] == "63.00"
    assert sum(b["customers"] for b in result["distribution"]) == 3


def test_draft_prices_for_chosen_customers(client, auth_headers, world) -> None:  # type: ignore[no-untyped-def]
    """Draft prices (one replacing Calls, a new fee) for one customer named by external id."""
    answer = client.post("/v1/simulations", headers=auth_headers, json={
        "plan_id": world["plan"]["id"], "external_customer_ids": ["ext1"], "timeframe_start": "2026-03-01T00:00:00Z",
        "timeframe_end": "2026-04-01T00:00:00Z", "prices": [
            {"replaces_price_id": world["calls"]["id"], "price": {
                "name": "Calls", "item_id": world["item"]["id"], "model_type": "unit", "cadence": "monthly",
                "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.05"}}},
            {"name": "Support", "item_id": world["item"]["id"], "model_type": "unit", "cadence": "monthly",
             "fixed_price_quantity": 1, "unit_config": {"unit_amount": "2.00"}},
        ]})
    assert answer.status_code == 200, answer.get_json()
    (customer,) = answer.get_json()["customers"]
    prices = {p["name"]: (p["current"], p["simulated"]) for p in customer["prices"]}
    # 10 calls in March: 1.00 now, 0.50 drafted; the platform fee is not in the draft; support is new.
    assert prices == {"Calls": ("1.00", "0.50"), "Platform": ("5.00", "0.00"), "Support": ("0.00", "2.00")}


def _version_with_adjustments(client, auth_headers, world) -> dict:  # type: ignore[no-untyped-def]
    """Create v3: v2's prices, 10% off every line and a 3.00 minimum on Calls; return the plan JSON."""
    answer = client.post(f"/v1/plans/{world['plan']['id']}/versions", headers=auth_headers, json={
        "version": 3, "add_adjustments": [
            {"adjustment": {"adjustment_type": "percentage_discount", "percentage_discount": "0.10"}},
            {"adjustment": {"adjustment_type": "minimum", "minimum_amount": "3.00",
                            "applies_to_price_ids": [world["calls"]["id"]]}}]})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()


def test_version_simulation_swaps_the_versions_adjustments(client, auth_headers, world) -> None:  # type: ignore[no-untyped-def]
    """Subscriptions on v1 (no adjustments) simulated under v3 get its discount and minimum in every total."""
    _version_with_adjustments(client, auth_headers, world)
    answer = client.post("/v1/simulations", headers=auth_headers, json={
        "plan_id": world["plan"]["id"], "version": 3, "timeframe_start": "2026-02-01T00:00:00Z",
        "timeframe_end": "2026-05-01T00:00:00Z"})
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    by = {c["customer_id"]: {p["name"]: (p["current"], p["simulated"]) for p in c["prices"]} for c in result["customers"]}
    # Calls at v2's 0.20 less 10%, raised to 3.00 (0, 10, 20 calls a month); Platform 5.00 less 10% = 4.50.
    assert by["cus_0"] == {"Calls": ("0.00", "9.00"), "Platform": ("15.00", "13.50")}
    assert by["cus_1"] == {"Calls": ("3.00", "9.00"), "Platform": ("15.00", "13.50")}
    assert by["cus_2"] == {"Calls": ("6.00", "10.80"), "Platform": ("15.00", "13.50")}
    assert (result["current_total"], result["simulated_total"], result["change_total"]) == ("54.00", "69.30", "15.30")
    # What the adjustments did, included above: none as billed; under v3 63.00 as rated plus 6.30.
    assert (result["current_adjustments"], result["simulated_adjustments"]) == ("0.00", "6.30")
    adjusted = {c["customer_id"]: c["simulated_adjustments"] for c in result["customers"]}
    assert adjusted == {"cus_0": "7.50", "cus_1": "1.50", "cus_2": "-2.70"}


def test_stored_lineage_decides_the_adjustment_swap(client, auth_headers, world) -> None:  # type: ignore[no-untyped-def]
    """Stored versions and timelines keep adjustment keys: v4's edit of a minimum a subscription removed at its
    creation stays out, its removal of the 10% discount drops it, and a subscription-level discount stays."""
    v3 = _version_with_adjustments(client, auth_headers, world)
    minimum = next(a for a in v3["adjustments"] if a["adjustment_type"] == "minimum")
    discount = next(a for a in v3["adjustments"] if a["adjustment_type"] == "percentage_discount")
    answer = client.post(f"/v1/plans/{world['plan']['id']}/versions", headers=auth_headers, json={
        "version": 4, "remove_adjustments": [{"adjustment_id": discount["id"]}], "replace_adjustments": [
            {"replaces_adjustment_id": minimum["id"], "adjustment": {
                "adjustment_type": "minimum", "minimum_amount": "4.00", "applies_to_price_ids": [world["calls"]["id"]]}}]})
    assert answer.status_code == 201, answer.get_json()
    with session_scope(world["engine"]) as s:
        create_customer(SqlCustomerRepository(s), customer_id="cus_3", name="C3", email="c3@x.test",
                        external_customer_id="ext3", currency="USD", now=START)
    sub = client.post("/v1/subscriptions", headers=auth_headers, json={
        "customer_id": "cus_3", "plan_id": world["plan"]["id"], "plan_version_number": 3,
        "start_date": START.isoformat(), "remove_adjustments": [{"adjustment_id": minimum["id"]}],
        "add_adjustments": [{"adjustment": {"adjustment_type": "amount_discount", "amount_discount": "1.00",
                                            "applies_to_price_ids": []}}]})
    assert sub.status_code == 201, sub.get_json()
    answer = client.post("/v1/simulations", headers=auth_headers, json={
        "plan_id": world["plan"]["id"], "version": 4, "customer_ids": ["cus_3"],
        "timeframe_start": "2026-03-01T00:00:00Z", "timeframe_end": "2026-04-01T00:00:00Z"})
    assert answer.status_code == 200, answer.get_json()
    (customer,) = answer.get_json()["customers"]
    # No calls: no minimum either way. Platform 5.00 less 1.00, then 10% (v3) or not (v4).
    assert {p["name"]: (p["current"], p["simulated"]) for p in customer["prices"]} == {
        "Calls": ("0.00", "0.00"), "Platform": ("3.60", "4.00")}
    assert (customer["current_adjustments"], customer["simulated_adjustments"]) == ("-1.40", "-1.00")


def test_draft_prices_with_draft_adjustments(client, auth_headers, world) -> None:  # type: ignore[no-untyped-def]
    """Draft adjustments (one continuing v3's minimum, one new) are the draft's whole set; left out, the default
    version's (v1: none) are kept."""
    v3 = _version_with_adjustments(client, auth_headers, world)
    minimum = next(a for a in v3["adjustments"] if a["adjustment_type"] == "minimum")
    prices = [{"replaces_price_id": world["calls"]["id"], "price": {
        "name": "Calls", "item_id": world["item"]["id"], "model_type": "unit", "cadence": "monthly",
        "billable_metric_id": "m_calls", "unit_config": {"unit_amount": "0.10"}}}]
    body = {"plan_id": world["plan"]["id"], "timeframe_start": "2026-03-01T00:00:00Z",
            "timeframe_end": "2026-04-01T00:00:00Z", "prices": prices}
    answer = client.post("/v1/simulations", headers=auth_headers, json={**body, "adjustments": [
        {"adjustment": {"adjustment_type": "minimum", "minimum_amount": "1.50",
                        "applies_to_price_ids": [world["calls"]["id"]]}, "replaces_adjustment_id": minimum["id"]},
        {"adjustment_type": "amount_discount", "amount_discount": "0.25"}]})
    assert answer.status_code == 200, answer.get_json()
    result = answer.get_json()
    # March: Calls 0.00 / 1.00 / 2.00 less 0.25 (never below 0), raised to 1.50; the platform fee is not drafted.
    calls = {c["customer_id"]: next(p["simulated"] for p in c["prices"] if p["name"] == "Calls")
             for c in result["customers"]}
    assert calls == {"cus_0": "1.50", "cus_1": "1.50", "cus_2": "1.75"}
    assert (result["current_total"], result["simulated_total"]) == ("18.00", "4.75")
    without = client.post("/v1/simulations", headers=auth_headers, json=body).get_json()
    assert without["simulated_total"] == "3.00"  # 0.00 + 1.00 + 2.00: v1 has no adjustments


_DRAFT = [{"name": "X", "item_id": "i", "model_type": "unit", "cadence": "monthly", "unit_config": {"unit_amount": "1"}}]
_OFF = {"adjustment_type": "amount_discount", "amount_discount": "1"}


@pytest.mark.parametrize("change, field", [
    ({"adjustments": []}, "adjustments"),
    ({"version": None, "prices": _DRAFT, "adjustments": "x"}, "adjustments"),
    ({"version": None, "prices": _DRAFT, "adjustments": [7]}, "adjustments[0]"),
    ({"version": None, "prices": _DRAFT, "adjustments": [{"adjustment_type": "percentage_discount",
                                                         "percentage_discount": "2"}]}, "adjustments[0].percentage_discount"),
    ({"version": None, "prices": _DRAFT, "adjustments": [{"adjustment": {"adjustment_type": "bogus"}}]},
     "adjustments[0].adjustment.adjustment_type"),
    ({"version": None, "prices": _DRAFT, "adjustments": [{"adjustment": _OFF, "replaces_adjustment_id": "nope"}]},
     "adjustments[0].replaces_adjustment_id"),
    ({"version": None, "prices": _DRAFT, "adjustments": [{"adjustment": _OFF, "replaces_adjustment_id": 3}]},
     "adjustments[0].replaces_adjustment_id"),
    ({"version": None, "prices": _DRAFT, "adjustments": [{"adjustment": _OFF, "surprise": 1}]},
     "adjustments[0].surprise"),
    ({"version": None}, "version"),
    ({"prices": []}, "version"),
    ({"version": 9}, "version"),
    ({"version": "2"}, "version"),
    ({"timeframe_start": "yesterday"}, "timeframe_start"),
    ({"timeframe_start": "2027-01-01T00:00:00Z", "timeframe_end": "2027-02-01T00:00:00Z"}, "timeframe_start"),
    ({"timeframe_end": "2025-01-01T00:00:00Z"}, "timeframe_end"),
    ({"customer_ids": ["nobody"]}, "customer_ids[0]"),
    ({"customer_ids": "cus_1"}, "customer_ids"),
    ({"surprise": 1}, "surprise"),
    ({"version": None, "prices": [{"price": {"name": "X"}, "replaces_price_id": "p"}]}, "prices[0].price.model_type"),
    ({"version": None, "prices": [{"replaces_price_id": "nope", "price": {
        "name": "X", "item_id": "i", "model_type": "unit", "cadence": "monthly",
        "unit_config": {"unit_amount": "1"}}}]}, "prices[0].replaces_price_id"),
])
def test_bad_input_names_the_field(client, auth_headers, world, change, field) -> None:  # type: ignore[no-untyped-def]
    """A bad simulation request is a 400 naming the field."""
    body = {"plan_id": world["plan"]["id"], "version": 2, "timeframe_start": "2026-02-01T00:00:00Z", **change}
    body = {k: v for k, v in body.items() if v is not None}
    answer = client.post("/v1/simulations", headers=auth_headers, json=body)
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["detail"].startswith(f"{field}:"), answer.get_json()


def test_unknown_plan_is_404(client, auth_headers, world) -> None:  # type: ignore[no-untyped-def]
    """A plan that does not exist is a 404."""
    answer = client.post("/v1/simulations", headers=auth_headers,
                         json={"plan_id": "plan_nope", "version": 1, "timeframe_start": "2026-02-01T00:00:00Z"})
    assert answer.status_code == 404


def test_cli_simulate_prints_the_same_result(app, world, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``marketsync simulate`` (progress bar on stderr) answers what the API answers."""
    import json

    from click.testing import CliRunner

    from worker.cli import main

    settings = app.extensions["marketsync"].settings
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)
    args = ["simulate", "--plan", world["plan"]["id"], "--version", "2", "--since", "2026-02-01T00:00:00Z",
            "--until", "2026-05-01T00:00:00Z"]
    text = CliRunner().invoke(main, args, catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert "revenue 54.00 -> 63.00 USD" in text.output and "cus_2  21.00 -> 27.00  (28.57%)" in text.output
    answer = json.loads(CliRunner().invoke(main, args + ["--json", "--customer", "cus_1"]).stdout)
    assert [c["customer_id"] for c in answer["customers"]] == ["cus_1"]
    failed = CliRunner().invoke(main, ["simulate", "--plan", "plan_nope", "--version", "1"])
    assert failed.exit_code == 1 and "plan_nope" in failed.output
