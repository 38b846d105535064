"""Running plan migrations: start one (stored, then enqueued), run it in chunks, cancel, revert in chunks.

The semantics are billing_core's (``service_migrations``); this module drives them. A run takes
chunks of ``CHUNK`` subscriptions, each one transaction (a worker killed mid-chunk leaves nothing
of it), until nothing is pending or its time budget is spent — then the caller enqueues the
next run, so one long migration never holds a worker. A cancel is one short transaction; the
reverts it owes run the same way (``revert``: chunks within a budget, the caller enqueues the
next). The cron sweep re-enqueues every live migration and every cancel still owing reverts
(after a lost job or a dead worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from billing_core import DryRunLine, Migration, SubscriptionOutcome, MigrationRequest, SqlCatalog, SqlPlanMigrations, UsageSource, service_migrations
from worker.db import session_scope

__all__ = ["CHUNK", "start", "run", "revert", "dry_run", "cancel", "live_migrations", "reverting_migrations", "get",
           "outcomes"]

CHUNK = 200          # subscriptions per transaction: SQLite's write lock is held a fraction of a second
RUN_BUDGET = 20.0    # seconds of chunks per job before the next job takes over

Progress = Callable[[Migration], None]


def start(engine: Engine, plan_id: str, request: MigrationRequest, *, now: datetime, migration_id: str) -> Migration:
    """Store a migration (every targeted subscription pending); the caller enqueues its run."""
    with session_scope(engine) as session:
        plan = SqlCatalog(session).get_plan(plan_id, for_update=True)
        return service_migrations.start_migration(session, plan, request, now=now, migration_id=migration_id)


def run(engine: Engine, migration_id: str, *, now_fn: Callable[[], datetime], chunk: int = CHUNK,
        budget: float | None = RUN_BUDGET, on_progress: Progress | None = None) -> Migration:
    """Migrate chunk after chunk until done, canceled or over ``budget`` seconds (None: no budget)."""
    return _chunks(engine, migration_id, service_migrations.migrate_chunk,
                   lambda m: m.status not in service_migrations.LIVE,
                   now_fn=now_fn, chunk=chunk, budget=budget, on_progress=on_progress)


def revert(engine: Engine, migration_id: str, *, now_fn: Callable[[], datetime], chunk: int = CHUNK,
           budget: float | None = RUN_BUDGET, on_progress: Progress | None = None) -> Migration:
    """Revert a canceled migration's owed edits chunk after chunk until none is owed or over ``budget`` seconds."""
    return _chunks(engine, migration_id, service_migrations.revert_chunk, lambda m: not m.to_revert,
                   now_fn=now_fn, chunk=chunk, budget=budget, on_progress=on_progress)


def _chunks(engine: Engine, migration_id: str, step: Callable[..., Migration], finished: Callable[[Migration], bool],
            *, now_fn: Callable[[], datetime], chunk: int, budget: float | None,
            on_progress: Progress | None) -> Migration:
    """Run ``step`` one transaction at a time until ``finished`` or over ``budget`` seconds (None: no budget)."""
    deadline = None if budget is None else time.monotonic() + budget
    while True:
        with session_scope(engine) as session:
            migration = step(session, migration_id, limit=chunk, now=now_fn())
        if on_progress is not None:
            on_progress(migration)
        if finished(migration):
            return migration
        if deadline is not None and time.monotonic() >= deadline:
            return migration


def dry_run(engine: Engine, plan_id: str, request: MigrationRequest, usage: UsageSource, *,
            now: datetime) -> list[DryRunLine]:
    """Price every targeted subscription's current period before and after; writes nothing."""
    with session_scope(engine) as session:
        lines = service_migrations.dry_run(session, SqlCatalog(session).get_plan(plan_id), request, usage, now=now)
        session.rollback()
    return lines


def cancel(engine: Engine, plan_id: str, migration_id: str, *, now: datetime) -> Migration:
    """Cancel a migration in one short transaction: stop the rest, owe its not-yet-effective edits a
    revert; the caller enqueues the revert (``revert``)."""
    with session_scope(engine) as session:
        return service_migrations.cancel_migration(session, plan_id, migration_id, now=now)


def live_migrations(engine: Engine) -> list[str]:
    """Return the ids of migrations not yet finished (to resume after a lost job)."""
    with session_scope(engine) as session:
        return SqlPlanMigrations(session).live_ids()


def reverting_migrations(engine: Engine) -> list[str]:
    """Return the ids of canceled migrations still owing reverts (to resume after a lost job)."""
    with session_scope(engine) as session:
        return SqlPlanMigrations(session).reverting_ids()


def get(engine: Engine, plan_id: str | None, migration_id: str) -> Migration:
    """Return a migration with its counts."""
    with session_scope(engine) as session:
        return SqlPlanMigrations(session).get(plan_id, migration_id)


def outcomes(engine: Engine, migration_id: str, kinds: set[str] | None = None) -> list[SubscriptionOutcome]:
    """Return a migration's per-subscription outcomes (of some kinds)."""
    with session_scope(engine) as session:
        return SqlPlanMigrations(session).outcomes(migration_id, outcomes=kinds)
