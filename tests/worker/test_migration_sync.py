"""A migrated marketplace contract keeps reporting exactly across the effective instant, on each
marketplace's real SDK client against its emulator (SQLite, then PostgreSQL); and a listing
follows its billing plan's default version for new contracts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from billing_core import SqlCatalog, SqlSubscriptions
from billing_core.plans import add_version
from billing_core.service_migrations import MigrationRequest
from tests.billing_core.helpers import unit
from tests.worker.sync_support import SyncEnv, ingest, map_contract, start_of_test_window
from tests.worker.test_dimensions import env  # noqa: F401 - the fixture (three marketplaces × two databases)
from worker import hourly, plan_migrations


def _version_two(env: SyncEnv, *, default: bool) -> None:  # noqa: F811
    """plan_sync v2: the token price (key plan_sync_p) edited from 0.001 to 0.002."""
    with Session(env.engine) as session:
        catalog = SqlCatalog(session)
        plan = catalog.get_plan("plan_sync", for_update=True)
        catalog.save_plan(add_version(plan, prices=[unit("0.002", id="plan_sync_p2", key="plan_sync_p",
                                                         metric="m_tokens")],
                                      now=datetime.now(UTC), make_default=default))
        session.commit()


def test_a_reporting_hour_across_the_effective_instant_reports_old_then_new_price(env: SyncEnv) -> None:  # noqa: F811
    """An hour crossing the effective instant reports usage before it at the old price and after it at the new, exact at the emulator."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    now = datetime.now(UTC)
    ingest(env.engine, customer, 1000, start + timedelta(minutes=5))          # hour 0: 1.00
    assert hourly.report_contract(env.engine, env.adapter, contract, start, now=now)["quantity"] == 100
    _version_two(env, default=False)
    instant = start + timedelta(hours=1, minutes=30)
    migration = plan_migrations.start(env.engine, "plan_sync", MigrationRequest(to_version=2, effective_time=instant),
                                      now=now, migration_id="mig_sync")
    done = plan_migrations.run(env.engine, migration.id, now_fn=lambda: now, budget=None)
    assert done.status == "completed" and done.counts == {"migrated": 1}
    ingest(env.engine, customer, 1000, start + timedelta(minutes=70))         # before the instant: 1.00
    ingest(env.engine, customer, 1000, start + timedelta(minutes=100))        # after it: 2.00
    hour_one = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1), now=now)
    assert hour_one["quantity"] == 300, hour_one
    assert env.totals() == 400
    # What the next hourly run would carry forward equals a computation from scratch (marketsync verify).
    assert hourly.verify_carried(env.engine, now=datetime.now(UTC))[1] == []


def test_a_listing_follows_the_default_version_for_new_contracts(env: SyncEnv) -> None:  # noqa: F811
    """A contract mapped after the plan's default version changed gets a subscription on the new default."""
    start = start_of_test_window()
    _, before = map_contract(env, start=start)
    _version_two(env, default=True)
    _, after = map_contract(env, start=start)
    with Session(env.engine) as session:
        repo = SqlSubscriptions(session)
        versions = {customer: {i.plan_version for s in repo.for_customer(customer) for i in s.intervals}
                    for customer in (before, after)}
    assert versions == {before: {1}, after: {2}}
