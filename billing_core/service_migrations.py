"""Use cases for plan migrations: start, run a chunk, apply what is pending, cancel, revert a chunk, dry run.

A migration is created with one pending outcome per targeted subscription and then run in
chunks (``migrate_chunk``, each one transaction): every subscription's timeline edit and its
outcome are written together, so a chunk killed mid-way leaves nothing half-applied and the
next run resumes with what is still pending. The migration row is locked for the duration of a
chunk, so a cancel waits for the running chunk.

A cancel is one short transaction: the migration becomes ``canceled`` at the cancel's instant,
its pending subscriptions ``canceled``, and every edit whose instant is after the cancel's is
owed a revert. The reverts run in chunks too (``revert_chunk``), each subscription's restored
timeline and its outcome (``reverted``, or ``kept`` with the reason) in one transaction. The
cancel's instant, not the revert's, decides what is "not yet effective": an edit whose instant
passes while its revert waits is still reverted (a backdated edit), unless an invoice was issued
for a period past its instant before the cancel — then it is kept and says so. Whatever
applies pending migrations (a chunk, ``apply_pending`` before an invoice is issued) first runs
the subscriptions' owed reverts (``revert_owed``), and issuing an invoice runs them in any case,
so no invoice is issued at a canceled migration's prices and a later migration moves the
timeline as it is to be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.orm import Session

from billing_core.bulk import without_gc
from billing_core.errors import Conflict, InvalidInput
from billing_core.invoices import compute_invoice
from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.plan_migrations import (
    CANCELED, PENDING, Migration, SqlPlanMigrations, SubscriptionOutcome,
)
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.service_outbox import RenderCache, emit_subscription, prefetch_customers
from billing_core.plan_migrations import (
    LIVE, EffectiveTime, Outcome, Overrides, migrate_subscription, revert_migration,
)
from billing_core.plans import Plan
from billing_core.subscriptions import Subscription, billing_period
from billing_core.usage import UsageSource

__all__ = ["MigrationRequest", "DryRunLine", "start_migration", "migrate_chunk", "apply_pending",
           "cancel_migration", "revert_chunk", "revert_owed", "dry_run", "LIVE"]


@dataclass(frozen=True)
class MigrationRequest:
    """What to migrate: to which version, from which, whom, when, and what to do with overrides."""

    to_version: int
    from_versions: Sequence[int] | None = None      # default: every older version
    subscription_ids: Sequence[str] | None = None   # default: every subscription on the plan
    effective_time: datetime | EffectiveTime = EffectiveTime.END_OF_INVOICE
    overrides: Overrides = Overrides.KEEP


@dataclass(frozen=True)
class DryRunLine:
    """One subscription in a dry run: its current period's invoice total under the old and new version."""

    subscription_id: str
    outcome: str
    effective_at: datetime | None
    reasons: tuple[str, ...]
    old_total: Decimal
    new_total: Decimal

    @property
    def difference(self) -> Decimal:
        return self.new_total - self.old_total


def _checked(session: Session, plan: Plan, request: MigrationRequest, now: datetime) -> tuple[list[int], list[str]]:
    versions = {v.version for v in plan.versions}
    if request.to_version not in versions:
        raise InvalidInput(f"to_version: plan {plan.id} has no version {request.to_version}", field="to_version")
    if request.from_versions is None:
        from_versions = sorted(v for v in versions if v < request.to_version)
    else:
        from_versions = sorted(set(request.from_versions))
        for v in from_versions:
            if v not in versions or v == request.to_version:
                raise InvalidInput(f"from_versions: {v} is not another version of plan {plan.id}", field="from_versions")
    if not from_versions:
        raise InvalidInput(f"from_versions: plan {plan.id} has no version to migrate from", field="from_versions")
    repo = SqlSubscriptions(session)
    if request.subscription_ids is None:
        ids = repo.ids_on_plan(plan.id, active_after=now)
    else:
        ids = sorted(set(request.subscription_ids))
        found = repo.get_many(ids)
        missing = [s for s in ids if s not in found]
        if missing:
            raise InvalidInput(f"subscription_ids: subscription {missing[0]} not found", field="subscription_ids")
    return from_versions, ids


def start_migration(session: Session, plan: Plan, request: MigrationRequest, *, now: datetime,
                    migration_id: str) -> Migration:
    """Store a migration with every targeted subscription pending (nothing is edited yet)."""
    from_versions, ids = _checked(session, plan, request, now)
    return SqlPlanMigrations(session).add(
        id=migration_id, plan_id=plan.id, to_version=request.to_version, from_versions=from_versions,
        effective_time=request.effective_time, overrides=Overrides(request.overrides).value,
        subscription_ids=ids, now=now)


def _apply(session: Session, migration: Migration, plan: Plan, subscription_ids: Sequence[str],
           now: datetime) -> None:
    repo, migrations = SqlSubscriptions(session), SqlPlanMigrations(session)
    # An edit a canceled migration still owes a revert goes first: this one moves the timeline as it is to be.
    revert_owed(session, subscription_ids, now=now)
    subs = repo.get_many(subscription_ids, for_update=True)
    # A chunk changes timelines only: its events read each customer (in one query), the plan and the
    # endpoints once for all of them.
    renders: RenderCache = {}
    prefetch_customers(session, list(subs.values()), renders)
    for sub_id in subscription_ids:
        sub = subs.get(sub_id)
        if sub is None:
            migrations.record(migration.id, SubscriptionOutcome(sub_id, Outcome.SKIPPED, None,
                                                                ("the subscription no longer exists",), None), now=now)
            continue
        try:
            result = migrate_subscription(sub, plan, migration.to_version, from_versions=migration.from_versions,
                                          effective_time=migration.effective_time, overrides=migration.overrides,
                                          now=now, migration_id=migration.id, as_of=migration.created_at)
        except InvalidInput as exc:  # this timeline cannot take the edit: the others still move
            migrations.record(migration.id, SubscriptionOutcome(sub_id, Outcome.SKIPPED, None, (str(exc),), None),
                              now=now)
            continue
        if result.subscription is not None:
            repo.save(result.subscription, expected_revision=len(sub.edits))
            if result.effective_at is not None:
                _tell(session, sub, result.subscription, migration.to_version, result.effective_at, now=now,
                      cache=renders)
        migrations.record(migration.id, SubscriptionOutcome(sub_id, result.outcome.value, result.effective_at,
                                                            result.reasons, result.undo), now=now)


def _version_change(before: Subscription, effective_at: datetime, to_version: int) -> dict[str, object]:
    """The properties of Orb's ``subscription.plan_version_change*`` events."""
    previous = before.phase_at(effective_at).plan_version if before.phases else to_version
    return {"effective_date": effective_at.isoformat().replace("+00:00", "Z"),
            "new_plan_version_number": to_version, "previous_plan_version_number": previous}


def _tell(session: Session, before: Subscription, after: Subscription, to_version: int, effective_at: datetime,
          *, now: datetime, cache: RenderCache | None = None) -> None:
    """Emit ``subscription.plan_version_changed`` for an instant already reached, else
    ``..._change_scheduled`` (the sweep, ``note_effective``, tells the change when its instant comes)."""
    kind = "subscription.plan_version_changed" if effective_at <= now else "subscription.plan_version_change_scheduled"
    emit_subscription(session, kind, after, now=now, properties=_version_change(before, effective_at, to_version),
                      cache=cache)


def note_effective(session: Session, *, since: datetime, now: datetime) -> int:
    """Emit ``subscription.plan_version_changed`` for each scheduled migration edit whose instant fell in
    ``(since, now]`` (written ahead of it: ``_tell`` announced it as scheduled). Returns how many."""
    migrations = SqlPlanMigrations(session)
    due = migrations.scheduled_effective_between(since, now)
    subs = SqlSubscriptions(session).get_many(sorted({o.subscription_id for _, o in due}))
    versions = {mid: migrations.get(None, mid).to_version for mid in {mid for mid, _ in due}}
    told, renders = 0, {}  # customers and plans read once for all of them
    for migration_id, outcome in due:
        sub = subs.get(outcome.subscription_id)
        if sub is None:  # deleted since: nothing to tell
            continue
        assert outcome.effective_at is not None  # the query selected it by its instant
        _tell_changed(session, sub, outcome.effective_at, versions[migration_id], now=now, cache=renders)
        told += 1
    return told


def _tell_changed(session: Session, sub: Subscription, effective_at: datetime, to_version: int, *, now: datetime,
                  cache: RenderCache | None = None) -> None:
    """Emit ``subscription.plan_version_changed`` for an edit already in the timeline whose instant has come."""
    properties = _version_change(sub, effective_at - timedelta(microseconds=1), to_version)
    properties["effective_date"] = effective_at.isoformat().replace("+00:00", "Z")
    emit_subscription(session, "subscription.plan_version_changed", sub, now=now, properties=properties,
                      cache=cache)


def _finish_if_done(migrations: SqlPlanMigrations, migration: Migration) -> Migration:
    migration = migrations.get(None, migration.id)
    if migration.counts.get(PENDING, 0) == 0 and migration.status in LIVE:
        migrations.set_status(migration.id, "action_needed" if migration.counts.get(Outcome.CONFLICT, 0)
                              else "completed")
        migration = migrations.get(None, migration.id)
    return migration


@without_gc
def migrate_chunk(session: Session, migration_id: str, *, limit: int, now: datetime) -> Migration:
    """Migrate up to ``limit`` pending subscriptions in this transaction; the migration as it then is."""
    migrations = SqlPlanMigrations(session)
    migration = migrations.get(None, migration_id, for_update=True)
    if migration.status not in LIVE:
        return migration
    if migration.status == "not_started":
        migrations.set_status(migration_id, "in_progress")
    pending = [o.subscription_id for o in migrations.outcomes(migration_id, outcomes={PENDING}, limit=limit)]
    if pending:
        _apply(session, migration, SqlCatalog(session).get_plan(migration.plan_id), pending, now)
    return _finish_if_done(migrations, migration)


def apply_pending(session: Session, subscription_id: str, *, now: datetime) -> int:
    """Apply every live migration still pending for a subscription (before issuing its invoice)."""
    migrations = SqlPlanMigrations(session)
    applied = 0
    for migration_id in migrations.pending_for(subscription_id):
        migration = migrations.get(None, migration_id, for_update=True)
        if migration.status not in LIVE or not migrations.outcomes(
                migration_id, outcomes={PENDING}, subscription_ids=[subscription_id]):
            continue
        _apply(session, migration, SqlCatalog(session).get_plan(migration.plan_id), [subscription_id], now)
        _finish_if_done(migrations, migration)
        applied += 1
    return applied


def cancel_migration(session: Session, plan_id: str, migration_id: str, *, now: datetime) -> Migration:
    """Cancel a migration: stop the subscriptions still pending and owe a revert to every edit whose
    instant is after ``now``; nothing is reverted here (``revert_chunk`` does it)."""
    migrations = SqlPlanMigrations(session)
    migration = migrations.get(plan_id, migration_id, for_update=True)
    if migration.status == CANCELED:
        raise Conflict(f"migration {migration_id} is already canceled", field="migration_id")
    migrations.cancel_pending(migration_id, reason="the migration was canceled", now=now)
    migrations.set_status(migration_id, CANCELED, canceled_at=now)
    return migrations.get(plan_id, migration_id)


def revert_chunk(session: Session, migration_id: str, *, limit: int, now: datetime) -> Migration:
    """Revert up to ``limit`` edits a canceled migration still owes in this transaction; the migration as it then is."""
    migrations = SqlPlanMigrations(session)
    migration = migrations.get(None, migration_id, for_update=True)  # one revert run at a time
    if migration.status == CANCELED and migration.to_revert:
        assert migration.canceled_at is not None  # set with the status
        owed = migrations.owed_reverts(migration_id, migration.canceled_at, limit=limit)
        _revert(session, migration, [o.subscription_id for o in owed], now)
        migration = migrations.get(None, migration_id)
    return migration


def revert_owed(session: Session, subscription_ids: Sequence[str], *, now: datetime) -> int:
    """Revert every edit of these subscriptions a canceled migration still owes (before anything bills
    or migrates them); how many were reverted.

    The canceled migrations' rows are not locked (a caller may hold another migration's): each
    subscription's row lock and its outcome's conditional move make a revert happen once.
    """
    migrations = SqlPlanMigrations(session)
    reverted = 0
    for migration_id, owing in migrations.owing_for(subscription_ids).items():
        reverted += _revert(session, migrations.get(None, migration_id), owing, now)
    return reverted


def _kept_because(sub: Subscription | None, outcome: SubscriptionOutcome,
                  billed: tuple[str, datetime] | None) -> str | None:
    """Return why an owed revert can no longer run (None when it can)."""
    if sub is None:
        return "not reverted: the subscription no longer exists"
    if outcome.undo is None:
        return "not reverted: the edit recorded nothing to revert"
    assert outcome.effective_at is not None  # owed reverts are selected by their instant
    if billed is not None and billed[1] > outcome.effective_at:
        # Reverting would rewrite a period an issued invoice billed at the new prices.
        return f"not reverted: invoice {billed[0]} billed a period past its instant before the cancel"
    return None


def _revert(session: Session, migration: Migration, subscription_ids: Sequence[str], now: datetime) -> int:
    """Revert each of these subscriptions' edits the canceled migration still owes (its timeline and
    outcome together) or keep it with the reason; how many were reverted."""
    assert migration.canceled_at is not None
    repo, migrations = SqlSubscriptions(session), SqlPlanMigrations(session)
    subs = repo.get_many(subscription_ids, for_update=True)
    # Read what is owed once the subscriptions are locked: a revert that ran meanwhile is not owed.
    owed = migrations.owed_reverts(migration.id, migration.canceled_at, subscription_ids=subscription_ids)
    billed = repo.billed_through([o.subscription_id for o in owed])
    reverted = 0
    for outcome in owed:
        sub = subs.get(outcome.subscription_id)
        reason = _kept_because(sub, outcome, billed.get(outcome.subscription_id))
        if reason is None:
            assert sub is not None and outcome.undo is not None
            try:
                restored = revert_migration(sub, outcome.undo, now=now, migration_id=migration.id,
                                            as_of=migration.canceled_at)
            except InvalidInput as exc:  # this timeline cannot take the revert (a MigrationError too)
                reason = f"not reverted: {exc}"
        if reason is not None:
            if migrations.record(migration.id, SubscriptionOutcome(
                    outcome.subscription_id, Outcome.KEPT, outcome.effective_at, outcome.reasons + (reason,),
                    outcome.undo), now=now, expected=outcome.outcome) and sub is not None \
                    and outcome.effective_at is not None and outcome.effective_at <= now:
                # The sweep (``note_effective``) passed it over while its revert was owed: tell it now.
                _tell_changed(session, sub, outcome.effective_at, migration.to_version, now=now)
            continue
        if migrations.record(migration.id, SubscriptionOutcome(outcome.subscription_id, Outcome.REVERTED,
                                                               outcome.effective_at, outcome.reasons, None),
                             now=now, expected=outcome.outcome):
            repo.save(restored, expected_revision=len(sub.edits))  # type: ignore[union-attr]
            reverted += 1
    return reverted


def dry_run(session: Session, plan: Plan, request: MigrationRequest, usage: UsageSource, *,
            now: datetime) -> list[DryRunLine]:
    """Return, per targeted subscription, the current period's invoice total before and after; writes nothing."""
    from_versions, ids = _checked(session, plan, request, now)
    repo = SqlSubscriptions(session)
    subs = repo.get_many(ids)
    lines = []
    for sub_id in ids:
        sub: Subscription = subs[sub_id]
        result = migrate_subscription(sub, plan, request.to_version, from_versions=from_versions,
                                      effective_time=request.effective_time, overrides=request.overrides,
                                      now=now, migration_id="dry_run")
        period = billing_period(sub, now)
        issued = repo.issued_for(sub_id)
        old = compute_invoice(sub, period, usage, now=now, issued=issued).total
        new = old if result.subscription is None else compute_invoice(
            result.subscription, period, usage, now=now, issued=issued).total
        lines.append(DryRunLine(sub_id, result.outcome.value, result.effective_at, result.reasons, old, new))
    return lines
