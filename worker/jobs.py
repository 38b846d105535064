"""RQ job functions: thin, primitive arguments, each calls one use case."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rq import get_current_job

CRON_HEARTBEAT_KEY = "marketsync:cron:heartbeat"
# Backoff (seconds) of the hourly report and drain jobs; the enqueuing process decides it.
SYNC_RETRY_INTERVALS = [10, 60, 300, 900, 1800]
SYNC_CHUNK = 50  # contracts per hourly report job
ENQUEUED_PREFIX = "marketsync:sync:enqueued:"  # + a contract's report job id: its report of that hour is queued
ENQUEUED_TTL = 2 * 86400


def record_cron_heartbeat() -> str:
    """Record that the cron process is alive (its last tick, UTC)."""
    job = get_current_job()
    stamp = datetime.now(timezone.utc).isoformat()
    if job is not None:
        job.connection.set(CRON_HEARTBEAT_KEY, stamp, ex=600)
    return stamp


def process_delivery(inbox_id: int) -> str:
    """Apply one stored webhook delivery to its contract."""
    from worker import runtime as runtime_module
    from worker.delivery import process

    return process(runtime_module.current(), inbox_id, now=datetime.now(timezone.utc))


def drain_inbox() -> dict[str, int]:
    """Apply every stored webhook delivery waiting in the inbox, oldest first."""
    from worker import runtime as runtime_module
    from worker.delivery import drain

    return drain(runtime_module.current(), now_fn=lambda: datetime.now(timezone.utc))


def sweep_inbox() -> int:
    """Enqueue deliveries left ``received`` (Redis was down, a worker died)."""
    from worker import runtime as runtime_module
    from worker.delivery import sweep

    return sweep(runtime_module.current(), now=datetime.now(timezone.utc))


# --- hourly sync and cancellation flush -----------------------------------------------------------

def _stamp_id(stamp: datetime) -> str:
    return stamp.strftime("%Y%m%d%H")


def report_job_id(contract_id: str, stamp: datetime) -> str:
    """Return the job id of one contract's hourly report (unique per contract and hour)."""
    return f"report-{contract_id}-{_stamp_id(stamp)}"


def run_hourly_sync(hour: str | None = None) -> dict[str, int]:
    """Enqueue the hourly report of every syncable contract for the hour that just ended (or ``hour``).

    Contracts go in chunks of ``SYNC_CHUNK`` per job: a job's fixed cost in RQ (a few dozen Redis
    round trips) is paid once per chunk, and the chunk's costs are read in one grouped query
    per metric (bench/sync). Each contract is still marked once per hour under its own report
    job id, so a second cron or a manual run never enqueues it again.
    """
    from rq import Retry

    from worker import runtime as runtime_module
    from worker import sync
    from worker.metering import hour_floor, previous_hour

    runtime = runtime_module.current()
    now = datetime.now(timezone.utc)
    stamp = hour_floor(datetime.fromisoformat(hour)) if hour else previous_hour(now)
    queue = runtime.queue("sync")
    contract_ids = sync.syncable_contracts(runtime.engine)
    # One round trip marks every contract's report for this hour; a taken mark means already enqueued.
    with runtime.redis.pipeline(transaction=False) as pipe:
        for contract_id in contract_ids:
            pipe.set(f"{ENQUEUED_PREFIX}{report_job_id(contract_id, stamp)}", 1, nx=True, ex=ENQUEUED_TTL)
        marked = pipe.execute()
    fresh = [c for c, new in zip(contract_ids, marked) if new]
    retry = Retry(max=len(SYNC_RETRY_INTERVALS), interval=SYNC_RETRY_INTERVALS)
    chunks = [fresh[i:i + SYNC_CHUNK] for i in range(0, len(fresh), SYNC_CHUNK)]
    if chunks:
        queue.enqueue_many([queue.prepare_data(report_contracts, (chunk, stamp.isoformat()), retry=retry,
                                               job_id=f"report-{_stamp_id(stamp)}-{chunk[0]}-{len(chunk)}",
                                               result_ttl=86400)
                            for chunk in chunks])
    # Behind the report jobs (the queue is FIFO): send what is left below a full batch.
    for marketplace in ("aws", "azure", "gcp"):
        queue.enqueue(drain_pending, marketplace, job_id=f"drain-{marketplace}-{_stamp_id(stamp)}-{len(fresh)}",
                      retry=retry)
    runtime.redis.set("marketsync:sync:last_fanout", now.isoformat())
    return {"enqueued": len(fresh), "skipped": len(contract_ids) - len(fresh)}


def report_contracts(contract_ids: list[str], hour: str) -> dict:
    """Report a chunk of contracts' outstanding units under the hour stamp ``hour`` (full batches sent)."""
    from worker import runtime as runtime_module
    from worker import sync

    runtime = runtime_module.current()
    now = datetime.now(timezone.utc)
    result = sync.report_many(runtime.engine, runtime.adapter, contract_ids, datetime.fromisoformat(hour), now=now)
    if not runtime.queue("sync").count:
        # The drain jobs already ran (another worker took them while this chunk was preparing):
        # send the last partial batches now rather than at the next ledger sweep.
        for marketplace in sync.marketplaces_with_pending(runtime.engine):
            result["sent"][marketplace] = sync.send_pending(runtime.engine, runtime.adapter(marketplace), marketplace,
                                                            now=now, max_batches=10_000)
    return result


def drain_pending(marketplace: str) -> dict[str, int]:
    """Send every pending report of ``marketplace`` (in full batches)."""
    from worker import runtime as runtime_module
    from worker import sync

    runtime = runtime_module.current()
    return sync.send_pending(runtime.engine, runtime.adapter(marketplace), marketplace,
                             now=datetime.now(timezone.utc), max_batches=10_000)


def report_contract(contract_id: str, hour: str, batch: bool = False) -> dict:
    """Report one contract's outstanding units under the hour stamp ``hour``."""
    from worker import runtime as runtime_module
    from worker import sync

    runtime = runtime_module.current()
    marketplace = sync.marketplace_of(runtime.engine, contract_id)
    return sync.report_contract(runtime.engine, runtime.adapter(marketplace), contract_id,
                                datetime.fromisoformat(hour), now=datetime.now(timezone.utc), batch=batch)


def flush_cancellation(contract_id: str, final: bool = False) -> dict:
    """Report a canceled contract's outstanding usage now (the final flush closes it)."""
    from rq import Retry

    from worker import runtime as runtime_module
    from worker import sync

    runtime = runtime_module.current()
    marketplace = sync.marketplace_of(runtime.engine, contract_id)
    try:
        result = sync.flush(runtime.engine, runtime.adapter(marketplace), contract_id,
                            now=datetime.now(timezone.utc), final=final)
    except sync.SyncError as exc:
        return {"contract_id": contract_id, "outcome": "skipped", "detail": str(exc)}
    if result.get("outcome") == "wait":
        runtime.queue("urgent").enqueue_at(
            datetime.fromisoformat(result["retry_at"]), flush_cancellation, contract_id, final,
            retry=Retry(max=5, interval=[5, 15, 60, 120, 300]))
    return result


def schedule_flushes(contract_id: str, *, grace_seconds: int, runtime=None) -> None:  # type: ignore[no-untyped-def]
    """Enqueue the immediate flush and the final one after the usage grace (both on urgent)."""
    from rq import Retry

    from worker import runtime as runtime_module

    queue = (runtime or runtime_module.current()).queue("urgent")
    retry = Retry(max=5, interval=[5, 15, 60, 120, 300])
    queue.enqueue(flush_cancellation, contract_id, False, job_id=f"flush-{contract_id}-now", retry=retry)
    queue.enqueue_in(timedelta(seconds=grace_seconds), flush_cancellation, contract_id, True,
                     job_id=f"flush-{contract_id}-final", retry=retry)


def sweep_ledger() -> dict[str, int]:
    """Send pending reports whose worker died (claims older than the claim timeout)."""
    from worker import runtime as runtime_module
    from worker import sync

    runtime = runtime_module.current()
    now = datetime.now(timezone.utc)
    totals: dict[str, int] = {}
    for marketplace in sync.marketplaces_with_pending(runtime.engine):
        for status, n in sync.send_pending(runtime.engine, runtime.adapter(marketplace), marketplace,
                                           now=now).items():
            totals[status] = totals.get(status, 0) + n
    return totals


def watch_deadlines() -> list[dict]:
    """Alert (log, metric, dashboard flag) on canceled contracts close to their deadline."""
    from worker import runtime as runtime_module
    from worker import sync
    from worker.logs import get_logger

    runtime = runtime_module.current()
    now = datetime.now(timezone.utc)
    overdue = sync.overdue_contracts(runtime.engine, now=now)
    log = get_logger("marketsync.watchdog")
    for item in overdue:
        newly = sync.flag_alert(runtime.engine, item["contract_id"], deadline=item["deadline"], now=now)
        if newly:
            runtime.redis.incr("marketsync:metrics:deadline_alerts")
            if item["missed"]:
                runtime.redis.incr("marketsync:metrics:deadline_misses")
            log.error("cancellation_deadline", contract=item["contract_id"], marketplace=item["marketplace"],
                      deadline=item["deadline"].isoformat(), missed=item["missed"])
    return [{**i, "deadline": i["deadline"].isoformat()} for i in overdue]


def flag_unbillable_usage() -> dict[str, int]:
    """Flag usage that arrived for closed contracts (kept, billed nowhere)."""
    from worker import runtime as runtime_module
    from worker import sync

    return sync.flag_unbillable(runtime_module.current().engine, now=datetime.now(timezone.utc))
