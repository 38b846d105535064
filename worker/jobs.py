"""RQ job functions: thin, primitive arguments, each reads the clock and calls one use case.

They are enqueued by ``worker.queueing`` (by dotted name, with their ids and retry policies)
and by the cron schedule (``worker.schedule``).
"""

from __future__ import annotations

from datetime import datetime, timezone

from rq import get_current_job

from billing_core import service_migrations
from worker import alerting, cancellation, delivery, hourly, outbound, plan_migrations, queueing
from worker.errors import Permanent
from worker.metering import hour_floor, previous_hour
from worker.runtime import current

CRON_HEARTBEAT_KEY = "marketsync:cron:heartbeat"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def record_cron_heartbeat() -> str:
    """Record that the cron process is alive (its last tick, UTC)."""
    job = get_current_job()
    stamp = _now().isoformat()
    if job is not None:
        job.connection.set(CRON_HEARTBEAT_KEY, stamp, ex=600)
    return stamp


# --- webhook deliveries ----------------------------------------------------------------------------

def process_delivery(inbox_id: int) -> str:
    """Apply one stored webhook delivery to its contract."""
    return delivery.process(current(), inbox_id, now=_now())


def drain_inbox() -> dict[str, int]:
    """Apply every stored webhook delivery waiting in the inbox, oldest first."""
    return delivery.drain(current(), now_fn=_now)


def sweep_inbox() -> int:
    """Enqueue deliveries left ``received`` (Redis was down, a worker died)."""
    return delivery.sweep(current(), now=_now())


# --- hourly sync -----------------------------------------------------------------------------------

def run_hourly_sync(hour: str | None = None) -> dict[str, int]:
    """Enqueue the hourly report of every syncable contract for the hour that just ended (or ``hour``)."""
    runtime, now = current(), _now()
    stamp = hour_floor(datetime.fromisoformat(hour)) if hour else previous_hour(now)
    return queueing.enqueue_hourly(runtime, hourly.syncable_contracts(runtime.engine), stamp, now=now)


def report_contracts(contract_ids: list[str], hour: str) -> dict:
    """Report a chunk of contracts' outstanding units under the hour stamp ``hour`` (full batches sent)."""
    runtime, now = current(), _now()
    result = hourly.report_many(runtime.engine, runtime.adapter, contract_ids, datetime.fromisoformat(hour), now=now)
    if queueing.sync_queue_empty(runtime):
        # The drain jobs already ran (another worker took them while this chunk was preparing):
        # send the last partial batches now rather than at the next ledger sweep.
        result["sent"].update(hourly.send_all_pending(runtime.engine, runtime.adapter, now=now, max_batches=10_000))
    return result


def drain_pending(marketplace: str) -> dict[str, int]:
    """Send every pending report of ``marketplace`` (in full batches)."""
    runtime = current()
    return hourly.send_pending(runtime.engine, runtime.adapter(marketplace), marketplace, now=_now(),
                               max_batches=10_000)


def report_contract(contract_id: str, hour: str) -> dict:
    """Report one contract's outstanding units under the hour stamp ``hour``."""
    runtime = current()
    marketplace = hourly.marketplace_of(runtime.engine, contract_id)
    return hourly.report_contract(runtime.engine, runtime.adapter(marketplace), contract_id,
                                  datetime.fromisoformat(hour), now=_now())


def sweep_ledger() -> dict[str, int]:
    """Send pending reports whose worker died (claims older than the claim timeout)."""
    runtime = current()
    totals: dict[str, int] = {}
    for counts in hourly.send_all_pending(runtime.engine, runtime.adapter, now=_now()).values():
        for status, n in counts.items():
            totals[status] = totals.get(status, 0) + n
    return totals


# --- cancellation ----------------------------------------------------------------------------------

def flush_cancellation(contract_id: str, final: bool = False) -> dict:
    """Report a canceled contract's outstanding usage now (the final flush closes it)."""
    runtime = current()
    marketplace = hourly.marketplace_of(runtime.engine, contract_id)
    try:
        result = cancellation.flush(runtime.engine, runtime.adapter(marketplace), contract_id, now=_now(),
                                    final=final)
    except Permanent as exc:
        return {"contract_id": contract_id, "outcome": "skipped", "detail": str(exc)}
    if result.get("outcome") == "wait":
        queueing.schedule_flush_at(runtime, contract_id, final, datetime.fromisoformat(result["retry_at"]))
    return result


def watch_deadlines() -> list[dict]:
    """Alert (log, metric, dashboard flag) on canceled contracts close to their deadline."""
    runtime = current()
    return cancellation.watch_deadlines(runtime.engine, runtime.redis, now=_now())


def flag_unbillable_usage() -> dict[str, int]:
    """Flag usage that arrived for closed contracts (kept, billed nowhere)."""
    return cancellation.flag_unbillable(current().engine, now=_now())


# --- plan migrations -------------------------------------------------------------------------------

def run_plan_migration(migration_id: str, run: int = 1) -> dict:
    """Run a plan migration's chunks for a while; enqueue the next run while subscriptions are pending."""
    runtime = current()
    migration = plan_migrations.run(runtime.engine, migration_id, now_fn=_now, chunk=plan_migrations.CHUNK,
                                    budget=plan_migrations.RUN_BUDGET)
    if migration.status in service_migrations.LIVE:
        queueing.enqueue_plan_migration(runtime, migration_id, run=run)
    return {"status": migration.status, **migration.counts}


def revert_plan_migration(migration_id: str, run: int = 1) -> dict:
    """Revert a canceled migration's owed edits for a while; enqueue the next run while some are owed."""
    runtime = current()
    migration = plan_migrations.revert(runtime.engine, migration_id, now_fn=_now, chunk=plan_migrations.CHUNK,
                                       budget=plan_migrations.RUN_BUDGET)
    if migration.to_revert:
        queueing.enqueue_plan_migration_revert(runtime, migration_id, run=run)
    return {"status": migration.status, "to_revert": migration.to_revert, **migration.counts}


def resume_plan_migrations() -> list[str]:
    """Enqueue a run of every migration still live and of every cancel still owing reverts (a job was
    lost or its worker died)."""
    runtime = current()
    run = int(_now().timestamp())
    ids = plan_migrations.live_migrations(runtime.engine)
    for migration_id in ids:
        queueing.enqueue_plan_migration(runtime, migration_id, run=run)
    reverting = plan_migrations.reverting_migrations(runtime.engine)
    for migration_id in reverting:
        queueing.enqueue_plan_migration_revert(runtime, migration_id, run=run)
    return ids + reverting


# --- outbound webhooks and alerts --------------------------------------------------------------------

def send_webhooks() -> dict[str, int]:
    """Send every due outbound webhook delivery, one thread per endpoint."""
    return outbound.send_due(current(), now_fn=_now)


def sweep_webhooks() -> int:
    """Signal a send when deliveries are due (Redis was down, a worker died, a retry came due)."""
    return outbound.sweep(current(), now=_now())


def prune_webhooks() -> dict[str, int]:
    """Delete outbound deliveries (and their events) finished more than WEBHOOK_RETENTION_DAYS ago."""
    return outbound.prune(current(), now=_now())


def note_ended_subscriptions() -> int:
    """Emit ``subscription.ended`` for subscriptions whose scheduled end has passed."""
    return outbound.note_ended(current(), now=_now())


def evaluate_alerts() -> dict[str, int]:
    """Fire the alert thresholds reached by usage that changed since the last evaluation."""
    return alerting.evaluate(current(), now=_now())
