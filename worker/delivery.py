"""Receiving and processing webhook deliveries: store first, enqueue, process idempotently."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any, Mapping

from sqlalchemy.exc import IntegrityError

from billing_core.errors import Conflict
from marketplaces.base import PermanentMarketplaceError

from worker import inbox, lifecycle, queueing
from worker.contract_events import ContractEvent
from worker.contracts import Applied, apply_event
from worker.errors import Permanent
from worker.logs import get_logger
from worker.runtime import Runtime
from worker.statuses import InboxStatus

log = get_logger("marketsync.inbox")


def accept(runtime: Runtime, *, source: str, delivery_id: str, event_type: str, body: bytes,
           headers: Mapping[str, str], event: ContractEvent | None, now: datetime) -> inbox.StoredDelivery:
    """Store a verified delivery (unique on source + id), then have it processed; never lose it.

    An event that needs no processing is stored as ``ignored``. The drain job is signalled
    right after, off the request path (``queueing.DrainSignal``). If Redis is unreachable, or the process
    dies before it signals, the delivery stays ``received`` and the cron sweeper enqueues it.
    """
    status = InboxStatus.RECEIVED if event is not None and event.kind != "ignored" else InboxStatus.IGNORED
    stored = inbox.store_delivery(
        runtime.engine, source=source, delivery_id=delivery_id, event_type=event_type, body=body,
        headers=headers, normalized=event.to_json() if event else None, status=status,
        contract_key=event.contract_key if event else "", now=now,
    )
    if stored.created and status == InboxStatus.RECEIVED:
        queueing.drain_signal(runtime).request()
    log.info("webhook_stored", source=source, delivery_id=delivery_id, inbox_id=stored.id,
             duplicate=not stored.created, status=stored.status)
    return stored


def enqueue(runtime: Runtime, inbox_id: int) -> bool:
    """Enqueue processing of one inbox row (retries and the sweeper); False when Redis is down."""
    return queueing.enqueue_delivery(runtime, inbox_id)


def drain(runtime: Runtime, *, now_fn: Any, batch: int = 200) -> dict[str, int]:
    """Process every received delivery, oldest first; a failing one is left for its retry."""
    queueing.clear_drain_signal(runtime)
    counts: dict[str, int] = {}
    while True:
        ids = inbox.received_ids(runtime.engine, limit=batch)
        if not ids:
            return counts
        for inbox_id in ids:
            try:
                outcome = process(runtime, inbox_id, now=now_fn(), statuses=(InboxStatus.RECEIVED,))
            except Exception as exc:  # noqa: BLE001 - recorded on the row; the sweeper retries it
                log.warning("webhook_failed", inbox_id=inbox_id, error=f"{type(exc).__name__}: {exc}")
                outcome = InboxStatus.FAILED
            counts[outcome] = counts.get(outcome, 0) + 1


CONTRACT_LOCK_SECONDS = 300
APPLY_ATTEMPTS = 4


def _contract_lock(runtime: Runtime, event: ContractEvent) -> Any:
    """Serialize processing per contract across every worker process (a Redis lock).

    Two deliveries of one contract (a modification and a cancellation, say) processed at once
    would both edit the same subscription timeline; one at a time, they apply in turn.
    """
    if not event.contract_key:
        return contextlib.nullcontext()
    return runtime.redis.lock(f"marketsync:contract-lock:{event.source}:{event.contract_key}",
                              timeout=CONTRACT_LOCK_SECONDS, blocking_timeout=CONTRACT_LOCK_SECONDS)


def _apply(runtime: Runtime, event: ContractEvent, *, now: datetime) -> Applied:
    """Apply the event, again when another writer (an API edit) changed the subscription meanwhile."""
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        try:
            return apply_event(runtime.engine, event, runtime.billing_gateway(), now=now)
        except (Conflict, IntegrityError) as exc:
            if attempt == APPLY_ATTEMPTS:
                raise
            log.info("webhook_apply_retry", contract_key=event.contract_key, attempt=attempt,
                     error=type(exc).__name__)
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def process(runtime: Runtime, inbox_id: int, *, now: datetime, statuses: tuple[str, ...] = inbox.CLAIMABLE) -> str:
    """Apply a stored delivery to its contract; safe to run any number of times, from any worker.

    ``statuses``: the row states this call may take it from (see ``inbox.claim``).
    """
    row = inbox.claim(runtime.engine, inbox_id, now=now, statuses=statuses)
    if row is None:
        return "already finished"
    if not row.normalized:
        inbox.finish(runtime.engine, inbox_id, InboxStatus.IGNORED, now=now)
        return InboxStatus.IGNORED
    event = ContractEvent.from_json(row.normalized)
    try:
        event = lifecycle.before_apply(runtime, event)
        with _contract_lock(runtime, event):
            applied = _apply(runtime, event, now=now)
            if applied.outcome == InboxStatus.DONE:
                lifecycle.after_apply(runtime, event, applied)
            # Recorded inside the lock: a creation processed next sees this row if it was deferred.
            inbox.finish(runtime.engine, inbox_id, applied.outcome, now=now,
                         error="" if applied.outcome != InboxStatus.DEFERRED else applied.detail,
                         contract_id=applied.contract_id, contract_key=event.contract_key)
    except (PermanentMarketplaceError, Permanent) as exc:
        # Retrying gives the same answer (refused credentials, an operation Microsoft refuses): record, do not
        # retry, neither by RQ nor by the sweeper.
        inbox.finish(runtime.engine, inbox_id, InboxStatus.FAILED, now=now, error=f"{type(exc).__name__}: {exc}", final=True)
        log.warning("webhook_failed", inbox_id=inbox_id, error=f"{type(exc).__name__}: {exc}", retry=False)
        return InboxStatus.FAILED
    except Exception as exc:
        inbox.finish(runtime.engine, inbox_id, InboxStatus.FAILED, now=now, error=f"{type(exc).__name__}: {exc}")
        raise
    log.info("webhook_processed", inbox_id=inbox_id, outcome=applied.outcome, contract_id=applied.contract_id,
             detail=applied.detail)
    if applied.outcome == InboxStatus.DONE and event.kind == "canceled" and applied.contract_id:
        # Final usage must reach the marketplace inside its window: flush at once and after the grace.
        queueing.schedule_flushes(runtime, applied.contract_id, grace_seconds=runtime.settings.CANCEL_USAGE_GRACE)
    if applied.outcome == InboxStatus.DONE and event.kind == "reinstated" and applied.contract_id:
        # Reports held while the subscription was suspended go out now, inside the marketplace's window.
        queueing.enqueue_drain(runtime, event.marketplace)
    if applied.outcome == InboxStatus.DONE and event.kind == "created":
        # Events that arrived before the contract existed are applied now, in arrival order.
        for waiting in inbox.deferred_for(runtime.engine, event.contract_key):
            process(runtime, waiting, now=now)
    return applied.outcome


def sweep(runtime: Runtime, *, now: datetime) -> int:
    """Enqueue every delivery that was stored but never processed; return how many."""
    count = 0
    for inbox_id in inbox.stale_received(runtime.engine, now=now):
        if enqueue(runtime, inbox_id):
            count += 1
    return count


def summary(stored: inbox.StoredDelivery) -> dict[str, Any]:
    """Return the receiver's 202 body."""
    return {"id": stored.id, "status": stored.status, "duplicate": not stored.created}
