"""Plan migrations stored and run in chunks on SQLite and PostgreSQL: outcomes, idempotency, a chunk
rolled back mid-way, cancel owing reverts of not-yet-effective edits that chunks then run, backdating,
issuing applies pending migrations and owed reverts, and a dry run that writes nothing."""

from datetime import timedelta
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import Engine

from billing_core import service_migrations, service_plans
from billing_core.customers import create_customer
from billing_core.errors import Conflict, InvalidInput
from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.plan_migrations import SqlPlanMigrations
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.plan_migrations import EffectiveTime, Overrides, migrate_subscription, parse_effective_time
from billing_core.plans import Item, add_version
from billing_core.service_migrations import MigrationRequest
from billing_core.subscriptions import ReplacePrice, create_subscription
from worker.db import session_scope

from .helpers import events, fixed, plan_of, source, t, unit

V1 = plan_of(unit("0.10", id="api_v1", key="api"), fixed("30.00", id="fee_v1", key="fee"))
PLAN = add_version(V1, prices=[unit("0.20", id="api_v2", key="api"), fixed("60.00", id="fee_v2", key="fee")],
                   now=t(2025, 1, 10))
NOW = t(2025, 1, 15)


def _subs():
    make = dict(customer_id="c1", plan=PLAN, version=1, now=t(2025, 1, 1))
    return [
        create_subscription(id="s1", start=t(2025, 1, 1), **make),
        create_subscription(id="s2", start=t(2025, 1, 5), **make),
        create_subscription(id="s3", start=t(2025, 1, 1), replace_prices=[
            ReplacePrice("api", unit("0.05", id="api_custom", key="api"))], **make),
        create_subscription(id="s4", start=t(2025, 1, 1), end=t(2025, 1, 20), **make),
        create_subscription(id="s5", start=t(2025, 1, 1), customer_id="c1", plan=PLAN, version=2, now=t(2025, 1, 1)),
    ]


@pytest.fixture
def engine(any_engine: Engine) -> Engine:
    with session_scope(any_engine) as s:
        create_customer(SqlCustomerRepository(s), customer_id="c1", name="Acme", email="ops@acme.test",
                        now=t(2024, 12, 1))
        SqlCatalog(s).add_item(Item("item1", "API", t(2024, 12, 1)))
        SqlCatalog(s).save_plan(PLAN)
        for sub in _subs():
            SqlSubscriptions(s).add(sub)
    return any_engine


def _start(engine, request, now=NOW, migration_id="mig1"):
    with session_scope(engine) as s:
        return service_migrations.start_migration(s, SqlCatalog(s).get_plan("plan1"), request, now=now,
                                                  migration_id=migration_id)


def _run(engine, migration_id="mig1", now=NOW, limit=2):
    while True:
        with session_scope(engine) as s:
            migration = service_migrations.migrate_chunk(s, migration_id, limit=limit, now=now)
        if migration.status not in service_migrations.LIVE:
            return migration


def _revert(engine, migration_id="mig1", now=NOW, limit=2):
    while True:
        with session_scope(engine) as s:
            migration = service_migrations.revert_chunk(s, migration_id, limit=limit, now=now)
        if not migration.to_revert:
            return migration


def _timelines(engine):
    with session_scope(engine) as s:
        return {sid: sub for sid, sub in SqlSubscriptions(s).get_many(["s1", "s2", "s3", "s4", "s5"]).items()}


@pytest.mark.postgres
def test_a_migration_runs_in_chunks_to_the_same_timelines_as_a_from_scratch_edit(engine):
    """Chunks migrate every targeted subscription once, each to the pure edit of its timeline, with outcomes and reasons."""
    before = _timelines(engine)
    started = _start(engine, MigrationRequest(to_version=2))
    assert (started.status, started.total, started.counts) == ("not_started", 5, {"pending": 5})
    done = _run(engine)
    assert done.status == "action_needed"
    assert done.counts == {"migrated": 2, "conflict": 1, "skipped": 2}
    after = _timelines(engine)
    for sid, sub in before.items():
        expected = migrate_subscription(sub, PLAN, 2, from_versions={1}, effective_time=EffectiveTime.END_OF_INVOICE,
                                        overrides=Overrides.KEEP, now=NOW, migration_id="mig1").subscription
        assert after[sid] == (expected or sub)
    # Running again changes nothing: each subscription moves once.
    assert _run(engine).counts == done.counts and _timelines(engine) == after
    with session_scope(engine) as s:
        outcomes = {o.subscription_id: o for o in SqlPlanMigrations(s).outcomes("mig1")}
    assert outcomes["s3"].outcome == "conflict" and "price api" in outcomes["s3"].reasons[0]
    assert outcomes["s4"].reasons == ("the subscription ends before the effective instant",)
    assert outcomes["s2"].effective_at == t(2025, 2, 5)


@pytest.mark.postgres
def test_a_chunk_rolled_back_mid_way_leaves_nothing_and_the_migration_resumes(engine):
    """A chunk whose transaction dies leaves no edit and no outcome; the next run completes the migration."""
    before = _timelines(engine)
    _start(engine, MigrationRequest(to_version=2))
    with pytest.raises(RuntimeError):
        with session_scope(engine) as s:
            service_migrations.migrate_chunk(s, "mig1", limit=3, now=NOW)
            raise RuntimeError("worker killed before the commit")
    with session_scope(engine) as s:
        assert SqlPlanMigrations(s).get("plan1", "mig1").counts == {"pending": 5}
    assert _timelines(engine) == before
    assert _run(engine).counts == {"migrated": 2, "conflict": 1, "skipped": 2}


@pytest.mark.postgres
def test_cancel_reverts_not_yet_effective_edits_and_stops_the_rest(engine):
    """Cancel stops the pending subscriptions at once and owes a revert to every edit whose instant is
    ahead; revert chunks then restore each timeline once; the migrate job stops."""
    before = _timelines(engine)
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 25)))
    with session_scope(engine) as s:
        service_migrations.migrate_chunk(s, "mig1", limit=3, now=NOW)  # s1, s2, s3 edited
    edited = _timelines(engine)
    with session_scope(engine) as s:
        canceled = service_migrations.cancel_migration(s, "plan1", "mig1", now=NOW)
    assert canceled.status == "canceled"
    assert (canceled.counts, canceled.to_revert) == ({"migrated": 2, "conflict": 1, "canceled": 2}, 3)
    assert _timelines(engine) == edited  # nothing reverted in the cancel's transaction
    reverted = _revert(engine, limit=2)
    assert (reverted.counts, reverted.to_revert, reverted.reverts) == ({"reverted": 3, "canceled": 2}, 0, 3)
    after = _timelines(engine)
    for sid, sub in before.items():
        assert (after[sid].intervals, after[sid].phases) == (sub.intervals, sub.phases)
    assert after["s1"].edits[-1].kind == "plan_migration_reverted"
    assert _revert(engine) == reverted and _timelines(engine) == after  # a revert runs once
    assert _run(engine).status == "canceled"  # the job stops
    with session_scope(engine) as s, pytest.raises(Conflict):
        service_migrations.cancel_migration(s, "plan1", "mig1", now=NOW)


@pytest.mark.postgres
def test_cancel_keeps_edits_already_effective(engine):
    """Cancel leaves an edit whose instant has passed in place."""
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 10), subscription_ids=["s1"]))
    _run(engine)
    with session_scope(engine) as s:
        canceled = service_migrations.cancel_migration(s, "plan1", "mig1", now=NOW)
    assert (canceled.counts, canceled.to_revert) == ({"migrated": 1}, 0)
    assert {i.price.id for i in _timelines(engine)["s1"].intervals} == {"api_v1", "api_v2", "fee_v1", "fee_v2"}


@pytest.mark.postgres
def test_issuing_an_invoice_applies_a_pending_backdated_migration_first(engine):
    """Issuing an invoice applies the subscription's pending migration before pricing it."""
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 1), subscription_ids=["s1", "s2"]),
           now=t(2025, 2, 1))
    usage = source(events("c1", (t(2025, 1, 3), {}), (t(2025, 1, 20), {})))
    with session_scope(engine) as s:
        invoice = service_plans.issue(s, "inv_20250101_s1", usage, now=t(2025, 2, 1))
    assert invoice.total == D("60.00") + D("0.40")  # version 2 from the start: nothing at version 1 prices
    with session_scope(engine) as s:
        migration = SqlPlanMigrations(s).get("plan1", "mig1")
    assert migration.counts == {"migrated": 1, "pending": 1} and migration.status == "not_started"


@pytest.mark.postgres
def test_issuing_an_invoice_runs_an_owed_revert_first_and_bills_the_old_prices(engine):
    """A subscription whose revert is still owed when its invoice is issued (after the edit's instant)
    is reverted first and billed at version 1 throughout; the revert job then has nothing left."""
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 25), subscription_ids=["s1", "s2"]))
    _run(engine)
    with session_scope(engine) as s:
        assert service_migrations.cancel_migration(s, "plan1", "mig1", now=NOW).to_revert == 2
    usage = source(events("c1", (t(2025, 1, 3), {}), (t(2025, 1, 28), {})))
    with session_scope(engine) as s:
        invoice = service_plans.issue(s, "inv_20250101_s1", usage, now=t(2025, 2, 1))
    assert invoice.total == D("30.00") + D("0.20")  # version 1's fee and unit price for all of January
    with session_scope(engine) as s:
        migration = SqlPlanMigrations(s).get("plan1", "mig1")
    assert (migration.counts, migration.to_revert) == ({"migrated": 1, "reverted": 1}, 1)  # s2's still owed
    assert _timelines(engine)["s1"].edits[-1].kind == "plan_migration_reverted"
    done = _revert(engine, now=t(2025, 2, 1))
    assert (done.counts, done.to_revert) == ({"reverted": 2}, 0)
    assert [e.kind for e in _timelines(engine)["s1"].edits].count("plan_migration_reverted") == 1


@pytest.mark.postgres
def test_a_revert_billed_past_its_instant_is_kept_with_its_reason_and_told(engine):
    """An edit whose period was invoiced past its instant before the cancel is not reverted: it is
    kept, says why, is counted, and is told as changed once; one only late is still reverted."""
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 25), subscription_ids=["s1", "s2"]))
    _run(engine)
    usage = source(events("c1", (t(2025, 1, 3), {})))
    with session_scope(engine) as s:  # January issued mid-period, before the cancel: it bills version 2 from the 25th
        billed = service_plans.issue(s, "inv_20250101_s1", usage, now=t(2025, 1, 20))
    with session_scope(engine) as s:
        service_migrations.cancel_migration(s, "plan1", "mig1", now=t(2025, 1, 21))
        # The sweep passes over edits still owed a revert.
        assert service_migrations.note_effective(s, since=t(2025, 1, 21), now=t(2025, 1, 26)) == 0
    before = _version_events(engine)
    done = _revert(engine, now=t(2025, 1, 26))  # after the instant
    assert (done.counts, done.to_revert, done.reverts) == ({"kept": 1, "reverted": 1}, 0, 2)
    with session_scope(engine) as s:
        outcomes = {o.subscription_id: o for o in SqlPlanMigrations(s).outcomes("mig1")}
    assert outcomes["s1"].reasons == (
        f"not reverted: invoice {billed.id} billed a period past its instant before the cancel",)
    timelines = _timelines(engine)
    assert {i.price.id for i in timelines["s1"].intervals} == {"api_v1", "api_v2", "fee_v1", "fee_v2"}
    assert {i.price.id for i in timelines["s2"].intervals} == {"api_v1", "fee_v1"}
    told = _version_events(engine)[len(before):]
    assert [(kind, key) for kind, key, _ in told] == [("subscription.plan_version_changed", "subscription:s1")]
    assert told[0][2]["effective_date"] == "2025-01-25T00:00:00Z"
    with session_scope(engine) as s:
        assert service_migrations.note_effective(s, since=t(2025, 1, 21), now=t(2025, 1, 27)) == 0  # told once


@pytest.mark.postgres
def test_a_later_migration_first_runs_the_revert_a_canceled_one_owes(engine):
    """A migration run while a canceled one still owes a subscription's revert reverts it first, then
    moves the restored timeline: the subscription ends on the later migration's edit, and the owed
    revert is not run a second time."""
    before = _timelines(engine)
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 25), subscription_ids=["s1", "s2"]))
    _run(engine)
    with session_scope(engine) as s:
        service_migrations.cancel_migration(s, "plan1", "mig1", now=NOW)
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 2, 1), subscription_ids=["s1"]),
           migration_id="mig2")
    assert _run(engine, "mig2").counts == {"migrated": 1}  # not "already on version 2"
    with session_scope(engine) as s:
        first = SqlPlanMigrations(s).get("plan1", "mig1")
    assert (first.counts, first.to_revert) == ({"migrated": 1, "reverted": 1}, 1)  # s2's revert is still owed
    assert _revert(engine).counts == {"reverted": 2}
    expected = migrate_subscription(before["s1"], PLAN, 2, from_versions={1}, effective_time=t(2025, 2, 1),
                                    overrides=Overrides.KEEP, now=NOW, migration_id="mig2").subscription
    after = _timelines(engine)
    assert (after["s1"].intervals, after["s1"].phases) == (expected.intervals, expected.phases)
    assert [e.kind for e in after["s1"].edits][1:] == ["plan_migration", "plan_migration_reverted", "plan_migration"]
    assert (after["s2"].intervals, after["s2"].phases) == (before["s2"].intervals, before["s2"].phases)


@pytest.mark.postgres
def test_dry_run_writes_nothing_and_prices_the_current_period_both_ways(engine):
    """A dry run answers old and new current-period totals and stores nothing."""
    before = _timelines(engine)
    usage = source(events("c1", (t(2025, 1, 3), {}), (t(2025, 1, 12), {})))
    with session_scope(engine) as s:
        lines = service_migrations.dry_run(s, SqlCatalog(s).get_plan("plan1"),
                                           MigrationRequest(to_version=2, effective_time=t(2025, 1, 1),
                                                            subscription_ids=["s1"]), usage, now=NOW)
    [line] = lines
    assert (line.old_total, line.new_total, line.difference) == (D("30.20"), D("60.40"), D("30.20"))
    assert _timelines(engine) == before
    with session_scope(engine) as s:
        assert SqlPlanMigrations(s).list(plan_id="plan1", limit=10) == ([], None)


@pytest.mark.postgres
@pytest.mark.parametrize(("request_", "field"), [
    (MigrationRequest(to_version=3), "to_version"),
    (MigrationRequest(to_version=2, from_versions=[2]), "from_versions"),
    (MigrationRequest(to_version=1), "from_versions"),
    (MigrationRequest(to_version=2, subscription_ids=["nope"]), "subscription_ids"),
])
def test_bad_requests_name_the_field_and_store_nothing(engine, request_, field):
    """An unknown version or subscription is refused naming the field, and nothing is stored."""
    with pytest.raises(InvalidInput) as error:
        _start(engine, request_)
    assert error.value.field == field
    with session_scope(engine) as s:
        assert SqlPlanMigrations(s).list(plan_id="plan1", limit=10) == ([], None)


_examples = iter(range(10_000))


@pytest.mark.postgres
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(starts=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=6),
       removed=st.lists(st.booleans(), min_size=6, max_size=6),
       effective=st.one_of(st.just("end_of_invoice"), st.just("end_of_term"),
                           st.integers(min_value=-20, max_value=40)),
       chunk=st.integers(min_value=1, max_value=4), killed=st.booleans(), overrides=st.sampled_from(["keep", "replace"]),
       revert_chunk=st.integers(min_value=1, max_value=4), revert_killed=st.booleans(),
       revert_at=st.integers(min_value=0, max_value=60))
def test_stored_migrations_equal_the_pure_edit_and_cancel_restores_what_is_not_yet_effective(
        engine, starts, removed, effective, chunk, killed, overrides, revert_chunk, revert_killed, revert_at):
    """Whatever the chunking and a rolled-back chunk, each stored timeline is the pure edit of its
    original; a cancel gives back the original of every subscription whose instant was ahead of the
    cancel, however its reverts are chunked, rolled back or late (after the instant: nothing was billed)."""
    n = next(_examples)
    ids, originals = [], {}
    with session_scope(engine) as s:
        for i, day in enumerate(starts):
            sub = create_subscription(id=f"p{n}_{i}", customer_id="c1", plan=PLAN, version=1, now=t(2025, 1, 1),
                                      start=t(2024, 12, 1) + timedelta(days=day),
                                      remove_prices=["api"] if removed[i] else [])
            SqlSubscriptions(s).add(sub)
            ids.append(sub.id)
            originals[sub.id] = sub
    when = parse_effective_time(effective) if isinstance(effective, str) else NOW + timedelta(days=effective)
    _start(engine, MigrationRequest(to_version=2, subscription_ids=ids, effective_time=when,
                                    overrides=Overrides(overrides)), migration_id=f"mig_p{n}")
    if killed:
        with pytest.raises(RuntimeError), session_scope(engine) as s:
            service_migrations.migrate_chunk(s, f"mig_p{n}", limit=chunk, now=NOW)
            raise RuntimeError("killed")
    _run(engine, f"mig_p{n}", limit=chunk)
    with session_scope(engine) as s:
        stored = SqlSubscriptions(s).get_many(ids)
    for sid, sub in originals.items():
        expected = migrate_subscription(sub, PLAN, 2, from_versions={1}, effective_time=when, overrides=overrides,
                                        now=NOW, migration_id=f"mig_p{n}").subscription
        assert stored[sid] == (expected or sub)
    with session_scope(engine) as s:
        service_migrations.cancel_migration(s, "plan1", f"mig_p{n}", now=NOW)
    later = NOW + timedelta(days=revert_at)
    if revert_killed:
        with pytest.raises(RuntimeError), session_scope(engine) as s:
            service_migrations.revert_chunk(s, f"mig_p{n}", limit=revert_chunk, now=later)
            raise RuntimeError("killed")
    assert _revert(engine, f"mig_p{n}", now=later, limit=revert_chunk).to_revert == 0
    with session_scope(engine) as s:
        after = SqlSubscriptions(s).get_many(ids)
        outcomes = {o.subscription_id: o for o in SqlPlanMigrations(s).outcomes(f"mig_p{n}")}
    for sid, sub in originals.items():
        if outcomes[sid].outcome == "reverted":
            assert (after[sid].intervals, after[sid].phases) == (sub.intervals, sub.phases)
            assert [e.kind for e in after[sid].edits].count("plan_migration_reverted") == 1
            assert outcomes[sid].effective_at > NOW
        else:
            assert after[sid] == stored[sid]
            assert outcomes[sid].outcome == "skipped" or outcomes[sid].effective_at <= NOW


def _version_events(engine):
    from sqlalchemy import select

    from billing_core.persistence.outbox import WebhookEventRow
    with session_scope(engine) as s:
        rows = s.execute(select(WebhookEventRow).where(WebhookEventRow.type.like("subscription.plan_version%"))
                         .order_by(WebhookEventRow.seq)).scalars()
        return [(r.type, r.ordering_key, r.to_domain().body["properties"]) for r in rows]


@pytest.mark.postgres
def test_a_scheduled_migration_is_told_when_written_and_again_when_its_instant_passes(engine):
    """Orb's events: plan_version_change_scheduled as each edit is written ahead of its instant,
    plan_version_changed once when the instant passes (the sweep), never for a reverted edit; a
    backdated migration is told as changed at once."""
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 25)))
    _run(engine)
    scheduled = _version_events(engine)
    assert {(kind, key) for kind, key, _ in scheduled} == {
        ("subscription.plan_version_change_scheduled", f"subscription:{sid}") for sid in ("s1", "s2", "s3")}
    assert scheduled[0][2] == {"effective_date": "2025-01-25T00:00:00Z", "new_plan_version_number": 2,
                               "previous_plan_version_number": 1}
    with session_scope(engine) as s:
        assert service_migrations.note_effective(s, since=NOW, now=t(2025, 1, 24)) == 0
        assert service_migrations.note_effective(s, since=t(2025, 1, 24), now=t(2025, 1, 26)) == 3
        assert service_migrations.note_effective(s, since=t(2025, 1, 26), now=t(2025, 1, 27)) == 0
    changed = _version_events(engine)[3:]
    assert {(kind, key) for kind, key, _ in changed} == {
        ("subscription.plan_version_changed", f"subscription:{sid}") for sid in ("s1", "s2", "s3")}
    assert all(p["previous_plan_version_number"] == 1 and p["new_plan_version_number"] == 2 for *_, p in changed)


@pytest.mark.postgres
def test_a_canceled_or_backdated_migration_is_told_as_it_is(engine):
    """A canceled scheduled migration's edits are never told as changed; a backdated one is changed at once."""
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 25)))
    _run(engine)
    with session_scope(engine) as s:
        service_migrations.cancel_migration(s, "plan1", "mig1", now=NOW)
        assert service_migrations.note_effective(s, since=NOW, now=t(2025, 1, 26)) == 0  # reverts owed
    _revert(engine, now=t(2025, 1, 26))
    with session_scope(engine) as s:
        assert service_migrations.note_effective(s, since=NOW, now=t(2025, 1, 26)) == 0  # reverted
    _start(engine, MigrationRequest(to_version=2, effective_time=t(2025, 1, 10)), migration_id="mig2")
    done = _run(engine, "mig2")
    kinds = [kind for kind, _, _ in _version_events(engine)]
    assert kinds.count("subscription.plan_version_changed") == done.counts["migrated"] + done.counts["conflict"] > 0
