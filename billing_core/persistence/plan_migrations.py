"""Rows and repository for plan migrations and their per-subscription outcomes (branch ``billing_plans``).

A migration row holds the request; every subscription it targets has one outcome row, written
``pending`` when the migration is created and moved exactly once to its outcome in the same
transaction as the subscription's timeline edit, so a migration is resumable and idempotent per
subscription. Counts are read from the outcome rows (never a stored counter).

A cancel stores no per-subscription row: a migration ``canceled`` at ``canceled_at`` owes a
revert to every outcome still ``migrated`` or ``conflict`` whose instant is after ``canceled_at``
(``owed_reverts``); each moves exactly once to ``reverted`` or, when it can no longer be
reverted, ``kept`` with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.codec import undo_from_dict, undo_to_dict
from billing_core.errors import NotFound
from billing_core.lines import iso
from billing_core.persistence.catalog import page_rows
from billing_core.persistence.rows import one_of, utc
from billing_core.persistence.writes import begin_write
from billing_core.plan_migrations import LIVE, EffectiveTime, Outcome, Undo, parse_effective_time

__all__ = ["PlanMigrationRow", "PlanMigrationOutcomeRow", "Migration", "SubscriptionOutcome",
           "MigrationNotFound", "SqlPlanMigrations", "PENDING", "CANCELED"]

PENDING = "pending"
CANCELED = "canceled"  # the status of a canceled migration, and the outcome of a subscription it never reached
OWING = (Outcome.MIGRATED.value, Outcome.CONFLICT.value)  # outcomes a cancel owes a revert (instant after it)
APPLIED = (*OWING, Outcome.KEPT.value)  # outcomes whose edit is in the timeline


class MigrationNotFound(NotFound):
    """No migration of this plan has this id."""


class PlanMigrationRow(SQLModel, table=True):
    """A plan migration request and its status."""

    __tablename__ = "plan_migrations"

    id: str = Field(primary_key=True, max_length=64)
    plan_id: str = Field(max_length=64, foreign_key="plans.id", index=True)
    to_version: int
    from_versions: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    effective_time: str = Field(max_length=64)
    overrides: str = Field(max_length=16)
    status: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))
    canceled_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))


class PlanMigrationOutcomeRow(SQLModel, table=True):
    """One subscription's outcome in a migration; ``undo`` is what its edit changed."""

    __tablename__ = "plan_migration_outcomes"

    migration_id: str = Field(primary_key=True, max_length=64, foreign_key="plan_migrations.id")
    subscription_id: str = Field(primary_key=True, max_length=64, index=True)
    outcome: str = Field(max_length=16)
    effective_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))
    reasons: str = Field(default="[]", sa_column=sa.Column(sa.Text, nullable=False))
    undo: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    recorded_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))


@dataclass(frozen=True)
class SubscriptionOutcome:
    """One subscription's outcome: pending, migrated, conflict, skipped or reverted."""

    subscription_id: str
    outcome: str
    effective_at: datetime | None
    reasons: tuple[str, ...]
    undo: Undo | None


@dataclass(frozen=True)
class Migration:
    """A migration with its outcome counts (``counts``: outcome -> number of subscriptions) and, once
    canceled, how many of its edits still owe a revert (``to_revert``)."""

    id: str
    plan_id: str
    to_version: int
    from_versions: tuple[int, ...]
    effective_time: datetime | EffectiveTime
    overrides: str
    status: str
    created_at: datetime
    canceled_at: datetime | None
    counts: dict[str, int]
    to_revert: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return self.total - self.counts.get(PENDING, 0)

    @property
    def reverts(self) -> int:
        """Return how many edits the cancel owed a revert: reverted, kept (with a reason) or still to revert."""
        return self.counts.get(Outcome.REVERTED.value, 0) + self.counts.get(Outcome.KEPT.value, 0) + self.to_revert


def _owed(o: sa.Table, canceled_at: Any) -> tuple[Any, ...]:
    """The conditions on an outcome row owed a revert by a cancel at ``canceled_at`` (a value or a column)."""
    return (o.c.outcome.in_(OWING), o.c.effective_at > canceled_at)


def _outcome(row: PlanMigrationOutcomeRow) -> SubscriptionOutcome:
    return SubscriptionOutcome(row.subscription_id, row.outcome, utc(row.effective_at) if row.effective_at else None,
                               tuple(json.loads(row.reasons)),
                               undo_from_dict(json.loads(row.undo)) if row.undo else None)


class SqlPlanMigrations:
    """Plan migrations and their outcomes through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, *, id: str, plan_id: str, to_version: int, from_versions: Sequence[int],
            effective_time: datetime | EffectiveTime, overrides: str, subscription_ids: Sequence[str],
            now: datetime) -> Migration:
        """Store a new migration and one pending outcome per targeted subscription."""
        self.session.add(PlanMigrationRow(
            id=id, plan_id=plan_id, to_version=to_version, from_versions=json.dumps(sorted(from_versions)),
            effective_time=effective_time.value if isinstance(effective_time, EffectiveTime) else iso(effective_time),
            overrides=overrides, status="not_started", created_at=now))
        self.session.flush()
        if subscription_ids:
            self.session.execute(sa.insert(PlanMigrationOutcomeRow.__table__), [  # type: ignore[attr-defined]
                {"migration_id": id, "subscription_id": s, "outcome": PENDING, "reasons": "[]"}
                for s in subscription_ids])
        return self.get(plan_id, id)

    def _migration(self, row: PlanMigrationRow) -> Migration:
        t = PlanMigrationOutcomeRow.__table__
        counts = dict(self.session.execute(
            sa.select(t.c.outcome, sa.func.count()).where(t.c.migration_id == row.id).group_by(t.c.outcome)).all())
        to_revert = 0
        if row.status == CANCELED and any(counts.get(o) for o in OWING):
            to_revert = self.session.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.migration_id == row.id, *_owed(t, row.canceled_at))).scalar_one()
        return Migration(id=row.id, plan_id=row.plan_id, to_version=row.to_version,
                         from_versions=tuple(json.loads(row.from_versions)),
                         effective_time=parse_effective_time(row.effective_time), overrides=row.overrides,
                         status=row.status, created_at=utc(row.created_at),
                         canceled_at=utc(row.canceled_at) if row.canceled_at else None,
                         counts={str(k): int(v) for k, v in counts.items()}, to_revert=int(to_revert))

    def get(self, plan_id: str | None, migration_id: str, *, for_update: bool = False) -> Migration:
        """Return a migration (of ``plan_id`` when given); ``for_update`` locks its row until commit."""
        if for_update:
            begin_write(self.session)
        row = self.session.get(PlanMigrationRow, migration_id, with_for_update=for_update,
                               populate_existing=for_update)
        if row is None or (plan_id is not None and row.plan_id != plan_id):
            raise MigrationNotFound(f"migration {migration_id} not found", field="migration_id")
        return self._migration(row)

    def list(self, *, plan_id: str | None, limit: int, cursor: str | None = None) -> tuple[list[Migration], str | None]:
        query = sa.select(PlanMigrationRow)
        if plan_id is not None:
            query = query.where(PlanMigrationRow.plan_id == plan_id)
        rows, nxt = page_rows(self.session, query, PlanMigrationRow.__table__, PlanMigrationRow, limit, cursor)
        return [self._migration(r) for r in rows], nxt

    def live_ids(self) -> list[str]:
        """Return the ids of every migration not finished (``not_started`` or ``in_progress``), oldest first."""
        m = PlanMigrationRow.__table__
        return list(self.session.execute(sa.select(m.c.id).where(m.c.status.in_(LIVE))
                                         .order_by(m.c.created_at, m.c.id)).scalars())

    def reverting_ids(self) -> list[str]:
        """Return the ids of canceled migrations with edits still owed a revert, oldest first."""
        m, o = PlanMigrationRow.__table__, PlanMigrationOutcomeRow.__table__
        owing = sa.exists().where(o.c.migration_id == m.c.id, *_owed(o, m.c.canceled_at))
        return list(self.session.execute(sa.select(m.c.id).where(m.c.status == CANCELED, owing)
                                         .order_by(m.c.created_at, m.c.id)).scalars())

    def owed_reverts(self, migration_id: str, canceled_at: datetime, *, limit: int | None = None,
                     subscription_ids: Collection[str] | None = None) -> list[SubscriptionOutcome]:
        """Return the outcomes of a canceled migration still owed a revert, by subscription id."""
        o = PlanMigrationOutcomeRow.__table__
        query = sa.select(PlanMigrationOutcomeRow).where(o.c.migration_id == migration_id, *_owed(o, canceled_at))
        if subscription_ids is not None:
            query = query.where(one_of(o.c.subscription_id, sorted(subscription_ids)))
        query = query.order_by(o.c.subscription_id)
        if limit is not None:
            query = query.limit(limit)
        return [_outcome(r) for r in self.session.execute(query).scalars()]

    def owing_for(self, subscription_ids: Collection[str]) -> dict[str, list[str]]:
        """Return, per canceled migration owing a revert of some of these subscriptions' edits (oldest
        first), the ids of those subscriptions."""
        o, m = PlanMigrationOutcomeRow.__table__, PlanMigrationRow.__table__
        rows = self.session.execute(
            sa.select(m.c.id, o.c.subscription_id).join(o, o.c.migration_id == m.c.id).where(
                one_of(o.c.subscription_id, sorted(set(subscription_ids))), m.c.status == CANCELED,
                *_owed(o, m.c.canceled_at))
            .order_by(m.c.created_at, m.c.id, o.c.subscription_id)).all()
        owing: dict[str, list[str]] = {}
        for migration_id, subscription_id in rows:
            owing.setdefault(migration_id, []).append(subscription_id)
        return owing

    def cancel_pending(self, migration_id: str, *, reason: str, now: datetime) -> int:
        """Move every pending outcome of a migration to ``canceled`` in one statement; how many moved."""
        t = PlanMigrationOutcomeRow.__table__
        result = self.session.execute(sa.update(t).where(t.c.migration_id == migration_id, t.c.outcome == PENDING)
                                      .values(outcome=CANCELED, reasons=json.dumps([reason]), recorded_at=now))
        return int(result.rowcount)

    def set_status(self, migration_id: str, status: str, *, canceled_at: datetime | None = None) -> None:
        values: dict[str, object] = {"status": status}
        if canceled_at is not None:
            values["canceled_at"] = canceled_at
        self.session.execute(sa.update(PlanMigrationRow.__table__)
                             .where(PlanMigrationRow.__table__.c.id == migration_id).values(**values))
        row = self.session.identity_map.get(self.session.identity_key(PlanMigrationRow, migration_id))
        if row is not None:
            self.session.expire(row)

    def outcomes(self, migration_id: str, *, outcomes: Collection[str] | None = None,
                 limit: int | None = None, subscription_ids: Collection[str] | None = None) -> list[SubscriptionOutcome]:
        """Return outcomes of a migration (optionally of some kinds / subscriptions), by subscription id."""
        query = sa.select(PlanMigrationOutcomeRow).where(PlanMigrationOutcomeRow.migration_id == migration_id)
        if outcomes is not None:
            query = query.where(one_of(PlanMigrationOutcomeRow.outcome, sorted(outcomes)))
        if subscription_ids is not None:
            query = query.where(one_of(PlanMigrationOutcomeRow.subscription_id, sorted(subscription_ids)))
        query = query.order_by(PlanMigrationOutcomeRow.subscription_id)
        if limit is not None:
            query = query.limit(limit)
        return [_outcome(r) for r in self.session.execute(query).scalars()]

    def record(self, migration_id: str, outcome: SubscriptionOutcome, *, now: datetime,
               expected: str = PENDING) -> bool:
        """Move one outcome from ``expected`` to its result; False if it had moved already."""
        t = PlanMigrationOutcomeRow.__table__
        result = self.session.execute(sa.update(t).where(
            t.c.migration_id == migration_id, t.c.subscription_id == outcome.subscription_id,
            t.c.outcome == expected).values(
                outcome=outcome.outcome, effective_at=outcome.effective_at, reasons=json.dumps(list(outcome.reasons)),
                undo=json.dumps(undo_to_dict(outcome.undo)) if outcome.undo else None, recorded_at=now))
        return result.rowcount == 1

    def pending_for(self, subscription_id: str) -> list[str]:
        """Return the ids of live migrations still pending for a subscription, oldest first."""
        o, m = PlanMigrationOutcomeRow.__table__, PlanMigrationRow.__table__
        return list(self.session.execute(
            sa.select(m.c.id).join(o, o.c.migration_id == m.c.id).where(
                o.c.subscription_id == subscription_id, o.c.outcome == PENDING,
                m.c.status.in_(LIVE)).order_by(m.c.created_at, m.c.id)).scalars())

    def scheduled_effective_between(self, since: datetime, until: datetime) -> list[tuple[str, SubscriptionOutcome]]:
        """Return the applied outcomes (migrated, in conflict or kept by a cancel) written ahead of their
        instant whose instant falls in ``(since, until]``, with their migration ids, by instant; an
        edit still owed a revert is left out (the revert removes it, or keeping it tells it)."""
        o, m = PlanMigrationOutcomeRow.__table__, PlanMigrationRow.__table__
        owed = sa.and_(m.c.status == CANCELED, *_owed(o, m.c.canceled_at))
        rows = self.session.execute(sa.select(PlanMigrationOutcomeRow).join(m, m.c.id == o.c.migration_id).where(
            o.c.effective_at > since, o.c.effective_at <= until, o.c.outcome.in_(APPLIED),
            o.c.recorded_at < o.c.effective_at, sa.not_(owed),
        ).order_by(o.c.effective_at, o.c.subscription_id)).scalars()
        return [(r.migration_id, _outcome(r)) for r in rows]

    def for_subscription(self, subscription_id: str) -> list[tuple[str, SubscriptionOutcome]]:
        """Return every migration outcome of a subscription with its migration id, oldest first."""
        rows = self.session.execute(
            sa.select(PlanMigrationOutcomeRow).join(
                PlanMigrationRow, PlanMigrationRow.id == PlanMigrationOutcomeRow.migration_id)  # type: ignore[arg-type]
            .where(PlanMigrationOutcomeRow.subscription_id == subscription_id)
            .order_by(PlanMigrationRow.created_at)).scalars()  # type: ignore[arg-type]
        return [(r.migration_id, _outcome(r)) for r in rows]
