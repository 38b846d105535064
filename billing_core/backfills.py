"""Backfills: a window of events for one customer (or all), sent late and applied in one step.

Lifecycle (Orb's): ``pending`` — events ingested with the backfill's id are stored but counted
by no metric; ``close`` makes them count and, with ``replace_existing_events``, retires the
events that were live in the window (for the backfill's customer, or every customer) —
``reflected``; ``revert`` retires the backfill's events and brings the replaced ones back —
``reverted``. Nothing is deleted: every step is a change of the read-path overlay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal, Protocol

from billing_core import errors
from billing_core.events import EventStore, IngestResult, Record, store_records

__all__ = [
    "Backfill",
    "BackfillNotFound",
    "BackfillStateError",
    "BackfillStore",
    "check_backfill_records",
    "close_backfill",
    "ingest_into_backfill",
    "create_backfill",
    "revert_backfill",
]

Status = Literal["pending", "reflected", "pending_revert", "reverted"]


class BackfillNotFound(errors.NotFound):
    """No backfill has this id."""


class BackfillStateError(errors.Conflict):
    """The backfill is not in a state that allows this step."""


@dataclass(frozen=True)
class Backfill:
    """A backfill window and its state."""

    id: str
    timeframe_start: datetime
    timeframe_end: datetime
    created_at: datetime
    customer_id: str | None = None
    replace_existing_events: bool = False
    status: Status = "pending"
    close_time: datetime | None = None
    reverted_at: datetime | None = None
    events_ingested: int = 0


class BackfillStore(Protocol):
    """Where backfills are kept and applied (``billing_core.persistence.events.SqlBackfillStore``)."""

    def add(self, backfill: Backfill) -> Backfill: ...

    def get(self, backfill_id: str) -> Backfill: ...

    def save(self, backfill: Backfill) -> Backfill: ...

    def reflect(self, backfill: Backfill) -> None: ...

    def unreflect(self, backfill: Backfill) -> None: ...

    def customer_alias(self, customer_id: str | None) -> str | None: ...


def create_backfill(
    store: BackfillStore,
    *,
    backfill_id: str,
    timeframe_start: datetime,
    timeframe_end: datetime,
    now: datetime,
    customer_id: str | None = None,
    replace_existing_events: bool = False,
) -> Backfill:
    """Open a pending backfill over ``[timeframe_start, timeframe_end)``."""
    if timeframe_start >= timeframe_end:
        raise errors.InvalidInput("timeframe_start must be before timeframe_end", field="timeframe_start")
    if timeframe_end > now:
        raise errors.InvalidInput("timeframe_end: a backfill covers the past only", field="timeframe_end")
    return store.add(
        Backfill(
            id=backfill_id,
            timeframe_start=timeframe_start,
            timeframe_end=timeframe_end,
            created_at=now,
            customer_id=customer_id,
            replace_existing_events=replace_existing_events,
        )
    )


def check_backfill_records(backfill: Backfill, records: list[Record], customer_alias: str | None) -> None:
    """Refuse events outside the backfill's window or customer (the whole batch is rejected)."""
    from billing_core.events import EventValidationFailed, to_micros

    if backfill.status != "pending":
        raise BackfillStateError(f"backfill {backfill.id} is {backfill.status}; only pending backfills take events")
    start, end = to_micros(backfill.timeframe_start), to_micros(backfill.timeframe_end)
    failures = []
    for record in records:
        problems = []
        if not start <= record[4] < end:
            problems.append("timestamp: outside the backfill's timeframe")
        if backfill.customer_id is not None and not (
            record[2] == backfill.customer_id or (customer_alias is not None and record[3] == customer_alias)
        ):
            problems.append("customer: not the backfill's customer")
        if problems:
            failures.append((record[0], problems))
    if failures:
        raise EventValidationFailed(failures)


def ingest_into_backfill(
    events: EventStore, backfills: BackfillStore, backfill_id: str, records: list[Record], *, sent: int
) -> IngestResult:
    """Store validated records in a pending backfill (all of them, or none)."""
    backfill = backfills.get(backfill_id)
    check_backfill_records(backfill, records, backfills.customer_alias(backfill.customer_id))
    result = store_records(events, records, sent=sent, backfill_id=backfill_id)
    backfills.save(replace(backfill, events_ingested=backfill.events_ingested + result.ingested))
    return result


def close_backfill(store: BackfillStore, backfill_id: str, *, now: datetime) -> Backfill:
    """Apply a pending backfill: its events count from now on (and replace the window's, if asked)."""
    backfill = store.get(backfill_id)
    if backfill.status == "reflected":
        return backfill
    if backfill.status != "pending":
        raise BackfillStateError(f"backfill {backfill_id} is {backfill.status}; only a pending backfill can be closed")
    store.reflect(backfill)
    return store.save(replace(backfill, status="reflected", close_time=now))


def revert_backfill(store: BackfillStore, backfill_id: str, *, now: datetime) -> Backfill:
    """Undo a backfill: its events stop counting and the events it replaced count again."""
    backfill = store.get(backfill_id)
    if backfill.status == "reverted":
        return backfill
    store.unreflect(backfill)
    return store.save(replace(backfill, status="reverted", reverted_at=now))
