"""The official ``orb-billing`` client drives versions and migrations end to end against a live
server: create a version (with ``replace_adjustments``), fetch it and its lineage, default it, start
a migration (the client has no create method: its generic ``post``), ``plans.migrations.list`` /
``retrieve`` while the RQ worker runs it, then ``cancel`` a scheduled one."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import orb

from tests.conftest import run_jobs
from tests.e2e.test_orb_client_plans import _unit, orb_client  # noqa: F401 - the fixture


def test_versions_and_migrations_through_the_official_client(app, orb_client: orb.Orb) -> None:  # noqa: F811
    """The official client creates, reads and defaults a version, then lists, retrieves and cancels a migration of it."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    item = orb_client.items.create(name="API")
    calls = orb_client.metrics.create(name="Calls", description=None, item_id=item.id,
                                      sql="SELECT COUNT(*) FROM events WHERE event_name = 'api_call'")
    customer = orb_client.customers.create(name="Acme", email="ops@acme.test", external_customer_id="acme",
                                           currency="USD")
    plan = orb_client.plans.create(currency="USD", name="Pro", prices=[_unit(item.id, calls.id, "0.10", "Calls")],
                                   adjustments=[{"adjustment": {"adjustment_type": "percentage_discount",
                                                                "percentage_discount": 0.1,
                                                                "applies_to_price_ids": []}}])
    subs = [orb_client.subscriptions.create(customer_id=customer.id, plan_id=plan.id, start_date=now)
            for _ in range(2)]

    v2 = orb_client.beta.create_plan_version(
        plan.id, version=2,
        replace_prices=[{"replaces_price_id": plan.prices[0].id,
                         "price": _unit(item.id, calls.id, "0.20", "Calls")["price"]}],
        replace_adjustments=[{"replaces_adjustment_id": plan.adjustments[0].id, "adjustment": {
            "adjustment_type": "percentage_discount", "percentage_discount": 0.2, "applies_to_price_ids": []}}])
    assert v2.version == 2
    fetched = orb_client.beta.fetch_plan_version("2", plan_id=plan.id)
    assert fetched.prices[0].id != plan.prices[0].id and fetched.prices[0].model_extra["price_key"] == plan.prices[0].model_extra["price_key"]
    assert sorted((e["kind"], e["change"]) for e in fetched.model_extra["lineage"]) == [
        ("adjustment", "edited"), ("price", "edited")]
    orb_client.beta.set_default_plan_version(plan.id, version=2)
    assert orb_client.plans.fetch(plan.id).version == 2

    started = orb_client.post(f"/plans/{plan.id}/migrations", cast_to=httpx.Response,
                              body={"to_version": 2, "effective_time": "end_of_invoice"})
    assert started.status_code == 201
    migration_id = started.json()["id"]
    listed = orb_client.plans.migrations.list(plan.id)
    assert [(m.id, m.status, m.effective_time) for m in listed] == [(migration_id, "not_started", "end_of_invoice")]

    run_jobs(app)
    done = orb_client.plans.migrations.retrieve(migration_id, plan_id=plan.id)
    assert done.status == "completed" and done.plan_id == plan.id
    assert done.model_extra["counts"]["migrated"] == 2
    assert {o["subscription_id"] for o in done.model_extra["subscriptions"]} == {s.id for s in subs}
    after = orb_client.subscriptions.fetch(subs[0].id)
    assert {i.plan_version for i in after.price_intervals} == {1, 2}

    # The migration is scheduled (the next invoice boundary is ahead): cancel answers at once and a job reverts it.
    canceled = orb_client.plans.migrations.cancel(migration_id, plan_id=plan.id)
    assert canceled.status == "canceled" and canceled.model_extra["counts"]["to_revert"] == 2
    run_jobs(app)
    assert {i.plan_version for i in orb_client.subscriptions.fetch(subs[0].id).price_intervals} == {1}
    assert orb_client.plans.migrations.retrieve(migration_id, plan_id=plan.id).model_extra["counts"]["reverted"] == 2
