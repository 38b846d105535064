"""The only place that enqueues: job ids, retry policies, the inbox drain signal, flush scheduling.

Jobs are named by their dotted path (``"worker.jobs.report_contract"``, which RQ imports when it
runs them), so this module imports no job function: ``worker.jobs`` imports it, never the other
way round. Every retry policy is one of the constants below.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from rq import Retry

from billing_core import process_local
from marketplaces.base import Marketplace
from worker import cancellation
from worker.logs import get_logger

log = get_logger("marketsync.queueing")

# Hourly report chunks and drains, and inbox deliveries: backoff of up to half an hour.
REPORT_RETRY = Retry(max=5, interval=[10, 60, 300, 900, 1800])
DELIVERY_RETRY = Retry(max=5, interval=[10, 60, 300, 900, 1800])
# A drain that died (the database went away under it) runs again soon for what is still
# ``received``; a row it left ``processing`` is the sweeper's (after 30 s).
DRAIN_RETRY = Retry(max=3, interval=[5, 30, 120])
# Cancellation flushes run against a marketplace deadline: short backoff.
FLUSH_RETRY = Retry(max=5, interval=[5, 15, 60, 120, 300])

SYNC_CHUNK = 200  # contracts per hourly report job
ENQUEUED_PREFIX = "marketsync:sync:enqueued:"  # + a contract's report job id: its report of that hour is queued
ENQUEUED_TTL = 2 * 86400
LAST_FANOUT_KEY = "marketsync:sync:last_fanout"
DRAIN_FLAG = "marketsync:inbox:drain-pending"

_JOBS = "worker.jobs."


def stamp_id(stamp: datetime) -> str:
    """Return the hour stamp as it appears in job ids."""
    return stamp.strftime("%Y%m%d%H")


def report_job_id(contract_id: str, stamp: datetime) -> str:
    """Return the job id of one contract's hourly report (unique per contract and hour)."""
    return f"report-{contract_id}-{stamp_id(stamp)}"


# --- the hourly fan-out and single reports ---------------------------------------------------------

def enqueue_hourly(runtime: Any, contract_ids: Sequence[str], stamp: datetime, *, now: datetime) -> dict[str, int]:
    """Enqueue the hourly report of ``contract_ids`` under ``stamp`` in chunks, then the drains.

    Contracts go in chunks of ``SYNC_CHUNK`` per job: a job's fixed cost in RQ (a few dozen Redis
    round trips) is paid once per chunk, and the chunk's costs are read in a few queries per
    metric whatever its size (stored fragments, the hour just ended, the raw edge): 200 contracts
    cost about half as much per contract as 50 (bench/sync). Each contract is still marked once per hour under its own report
    job id, so a second cron or a manual run never enqueues it again.
    """
    queue = runtime.queue("sync")
    # One round trip marks every contract's report for this hour; a taken mark means already enqueued.
    with runtime.redis.pipeline(transaction=False) as pipe:
        for contract_id in contract_ids:
            pipe.set(f"{ENQUEUED_PREFIX}{report_job_id(contract_id, stamp)}", 1, nx=True, ex=ENQUEUED_TTL)
        marked = pipe.execute()
    fresh = [c for c, new in zip(contract_ids, marked) if new]
    chunks = [fresh[i:i + SYNC_CHUNK] for i in range(0, len(fresh), SYNC_CHUNK)]
    if chunks:
        queue.enqueue_many([queue.prepare_data(_JOBS + "report_contracts", (chunk, stamp.isoformat()),
                                               retry=REPORT_RETRY, result_ttl=86400,
                                               job_id=f"report-{stamp_id(stamp)}-{chunk[0]}-{len(chunk)}")
                            for chunk in chunks])
    # Behind the report jobs (the queue is FIFO): send what is left below a full batch.
    for marketplace in Marketplace:
        queue.enqueue(_JOBS + "drain_pending", marketplace.value, retry=REPORT_RETRY,
                      job_id=f"drain-{marketplace.value}-{stamp_id(stamp)}-{len(fresh)}")
    runtime.redis.set(LAST_FANOUT_KEY, now.isoformat())
    return {"enqueued": len(fresh), "skipped": len(contract_ids) - len(fresh)}


def enqueue_drain(runtime: Any, marketplace: str) -> bool:
    """Enqueue a send of ``marketplace``'s pending reports on ``urgent`` (held ones released); False when Redis is down."""
    try:
        runtime.queue("urgent").enqueue(_JOBS + "drain_pending", marketplace, retry=REPORT_RETRY,
                                        job_id=f"drain-{marketplace}-{uuid.uuid4().hex}")
        return True
    except Exception as exc:  # noqa: BLE001 - the ledger sweeper sends them within minutes anyway
        log.warning("enqueue_failed", marketplace=marketplace, error=type(exc).__name__)
        return False


def sync_queue_empty(runtime: Any) -> bool:
    """Tell whether no job waits on the ``sync`` queue (the fan-out's drains already ran)."""
    return not runtime.queue("sync").count


def enqueue_report(runtime: Any, contract_id: str, stamp: datetime, *, suffix: str,
                   at: datetime | None = None) -> str:
    """Enqueue one contract's report under ``stamp`` on ``urgent`` (at ``at``, or now); return the job id."""
    job_id = f"{report_job_id(contract_id, stamp)}-{suffix}"
    queue = runtime.queue("urgent")
    if at is None:
        queue.enqueue(_JOBS + "report_contract", contract_id, stamp.isoformat(), job_id=job_id)
    else:
        queue.enqueue_at(at, _JOBS + "report_contract", contract_id, stamp.isoformat(), job_id=job_id)
    return job_id


# --- cancellation flushes --------------------------------------------------------------------------

FLUSHES_SCHEDULED = "marketsync:flushes-scheduled:"  # + contract id: its cancellation's flushes are queued
FLUSHES_SCHEDULED_TTL = 2 * 86400


def schedule_flushes(runtime: Any, contract_id: str, *, grace_seconds: int) -> dict[str, Any]:
    """Enqueue a canceled contract's flushes on ``urgent`` as its marketplace plans them, once.

    The final flush runs after the usage grace, but no later than its marketplace's deadline allows
    (``cancellation.flush_plan``); a flush at once too, unless it would take the hour stamp the final
    one needs. One cancellation arriving twice (SNS and EventBridge, or a redelivery) schedules them
    once: a Redis mark per contract.
    """
    now = datetime.now(timezone.utc)
    plan = cancellation.flush_plan(runtime.engine, contract_id, grace=timedelta(seconds=grace_seconds), now=now)
    mark = f"{FLUSHES_SCHEDULED}{contract_id}"
    if not runtime.redis.set(mark, plan.final_at.isoformat(), nx=True, ex=FLUSHES_SCHEDULED_TTL):
        log.info("flushes_already_scheduled", contract=contract_id)
        return {"scheduled": False, "final_at": None}
    queue = runtime.queue("urgent")
    try:
        if plan.now is not None:
            queue.enqueue(_JOBS + "flush_cancellation", contract_id, False, job_id=f"flush-{contract_id}-now",
                          retry=FLUSH_RETRY)
        if plan.final_at <= now:
            queue.enqueue(_JOBS + "flush_cancellation", contract_id, True, job_id=f"flush-{contract_id}-final",
                          retry=FLUSH_RETRY)
        else:
            queue.enqueue_at(plan.final_at, _JOBS + "flush_cancellation", contract_id, True,
                             job_id=f"flush-{contract_id}-final", retry=FLUSH_RETRY)
    except Exception:
        runtime.redis.delete(mark)  # scheduled nothing: let the next delivery (or a retry) try again
        raise
    log.info("flushes_scheduled", contract=contract_id, flush_now=plan.now is not None,
             final_at=plan.final_at.isoformat(), deadline=plan.deadline.isoformat())
    return {"scheduled": True, "flush_now": plan.now is not None, "final_at": plan.final_at.isoformat(),
            "deadline": plan.deadline.isoformat()}


def schedule_flush_at(runtime: Any, contract_id: str, final: bool, at: datetime) -> None:
    """Run a flush again at ``at`` (no hour stamp was free when it ran)."""
    runtime.queue("urgent").enqueue_at(at, _JOBS + "flush_cancellation", contract_id, final, retry=FLUSH_RETRY)


# --- webhook deliveries ----------------------------------------------------------------------------

def enqueue_delivery(runtime: Any, inbox_id: int) -> bool:
    """Enqueue processing of one inbox row (retries and the sweeper); False when Redis is down."""
    try:
        runtime.queue("contracts").enqueue(_JOBS + "process_delivery", inbox_id, job_id=f"inbox-{inbox_id}",
                                           retry=DELIVERY_RETRY, result_ttl=3600, failure_ttl=7 * 86400)
        return True
    except Exception as exc:  # noqa: BLE001 - the sweeper re-enqueues whatever Redis error this was
        log.warning("enqueue_failed", inbox_id=inbox_id, error=type(exc).__name__)
        return False


def signal_drain(runtime: Any) -> bool:
    """Make sure a drain job is queued; return False (and log) when Redis is unreachable.

    One Redis round trip (SET NX); only the call that sets the flag enqueues the job. The
    drain clears the flag before it reads the inbox, so a delivery stored after that read sets
    it again: nothing stored is ever left without a drain (and the sweeper is the second line).
    """
    try:
        if runtime.redis.set(DRAIN_FLAG, "1", nx=True, ex=60):
            runtime.queue("contracts").enqueue(_JOBS + "drain_inbox", job_id=f"inbox-drain-{uuid.uuid4().hex}",
                                               retry=DRAIN_RETRY, result_ttl=600, failure_ttl=7 * 86400)
        return True
    except Exception as exc:  # noqa: BLE001 - the sweeper re-enqueues whatever Redis error this was
        log.warning("enqueue_failed", error=type(exc).__name__)
        return False


def clear_drain_signal(runtime: Any) -> None:
    """Let the next stored delivery signal a drain again (the drain calls it before reading the inbox)."""
    runtime.redis.delete(DRAIN_FLAG)


class DrainSignal:
    """Signal the drain job after deliveries are stored, from a background thread of the process.

    A request that stored a delivery only sets a mark and answers; the thread wakes, clears the
    mark and calls ``signal_drain`` once for every delivery stored before that. A delivery
    stored while a signal is in flight sets the mark again, so every stored row is followed by
    a signal issued after its commit, and under load one Redis round trip covers many
    deliveries instead of one each. The thread leaves after a few idle seconds.
    """

    IDLE_SECONDS = 5.0

    def __init__(self, runtime: Any, send: Callable[[Any], bool] | None = None):
        self._runtime = weakref.ref(runtime)  # process_local keys the signal weakly on the runtime
        self._send = send or signal_drain
        self._wanted = threading.Event()
        self._settled = threading.Event()
        self._settled.set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a signal covering every delivery stored so far (returns at once)."""
        with self._lock:
            self._settled.clear()
            self._wanted.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="marketsync-drain-signal", daemon=True)
                self._thread.start()

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until every requested signal was sent (tests, shutdown); False on timeout."""
        return self._settled.wait(timeout)

    def _run(self) -> None:
        while True:
            if not self._wanted.wait(self.IDLE_SECONDS):
                with self._lock:
                    if not self._wanted.is_set():
                        self._thread = None
                        return
                continue
            self._wanted.clear()
            runtime = self._runtime()
            if runtime is not None:
                self._send(runtime)
            del runtime
            with self._lock:
                if not self._wanted.is_set():
                    self._settled.set()


def drain_signal(runtime: Any) -> DrainSignal:
    """Return the runtime's drain signal in this process."""
    return process_local(runtime, "drain_signal", lambda: DrainSignal(runtime))


# --- plan migrations -------------------------------------------------------------------------------

MIGRATION_RETRY = Retry(max=5, interval=[5, 30, 120, 300, 900])


def enqueue_plan_migration(runtime: Any, migration_id: str, *, run: int = 0) -> bool:
    """Enqueue the next run of a plan migration on ``sync``; False when Redis is down (the sweep resumes it)."""
    return _enqueue_migration_job(runtime, "run_plan_migration", "plan-migration", migration_id, run)


def enqueue_plan_migration_revert(runtime: Any, migration_id: str, *, run: int = 0) -> bool:
    """Enqueue the next run of a canceled migration's reverts on ``sync``; False when Redis is down (the sweep resumes it)."""
    return _enqueue_migration_job(runtime, "revert_plan_migration", "plan-migration-revert", migration_id, run)


def _enqueue_migration_job(runtime: Any, job: str, prefix: str, migration_id: str, run: int) -> bool:
    try:
        runtime.queue("sync").enqueue(_JOBS + job, migration_id, run + 1, retry=MIGRATION_RETRY,
                                      job_id=f"{prefix}-{migration_id}-{run + 1}", result_ttl=86400)
        return True
    except Exception as exc:  # noqa: BLE001 - resume_plan_migrations enqueues it again within minutes
        log.warning("enqueue_failed", job=job, migration_id=migration_id, error=type(exc).__name__)
        return False


# --- outbound webhooks and alerts --------------------------------------------------------------------

WEBHOOKS_FLAG = "marketsync:webhooks:send-pending"
ALERTS_FLAG = "marketsync:alerts:evaluate-pending"
# The sender and the evaluator keep their state in the database: a lost job is found again by the
# cron sweep within a minute, so these retry briefly.
OUTBOUND_RETRY = Retry(max=3, interval=[2, 10, 60])


def _signal_once(runtime: Any, flag: str, job: str) -> bool:
    """Enqueue ``job`` on ``webhooks`` unless its flag says one is queued; False when Redis is down."""
    try:
        if runtime.redis.set(flag, "1", nx=True, ex=60):
            runtime.queue("webhooks").enqueue(_JOBS + job, job_id=f"{job}-{uuid.uuid4().hex}",
                                              retry=OUTBOUND_RETRY, result_ttl=600, failure_ttl=86400)
        return True
    except Exception as exc:  # noqa: BLE001 - the cron sweep runs them within a minute anyway
        log.warning("enqueue_failed", job=job, error=type(exc).__name__)
        return False


def signal_webhooks(runtime: Any) -> bool:
    """Make sure a send of due webhook deliveries is queued (one Redis round trip)."""
    return _signal_once(runtime, WEBHOOKS_FLAG, "send_webhooks")


def signal_alerts(runtime: Any) -> bool:
    """Make sure an alert evaluation over the usage changed since the last one is queued."""
    return _signal_once(runtime, ALERTS_FLAG, "evaluate_alerts")


def clear_signal(runtime: Any, flag: str) -> None:
    """Let the next change signal again (the job calls it before it reads the database)."""
    runtime.redis.delete(flag)


def webhook_signal(runtime: Any) -> DrainSignal:
    """Return the runtime's background signal of the webhook sender in this process."""
    return process_local(runtime, "webhook_signal", lambda: DrainSignal(runtime, signal_webhooks))


def alert_signal(runtime: Any) -> DrainSignal:
    """Return the runtime's background signal of the alert evaluator in this process."""
    return process_local(runtime, "alert_signal", lambda: DrainSignal(runtime, signal_alerts))
