"""The webhook inbox: store every verified delivery before acknowledging it, then process it.

A delivery is unique on (source, delivery id): a repeated delivery finds the stored row and
changes nothing. Rows move ``received -> processing -> done | failed | ignored | deferred``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from billing_core import GroupCommit, process_local, write_lock
from worker.persistence.contracts import InboxRow
from worker.statuses import InboxStatus

# Headers worth keeping for audit; never authorization material.
_KEPT_HEADERS = {"content-type", "user-agent", "webhook-id", "webhook-timestamp",
                 "x-amz-sns-message-type", "x-amz-sns-message-id", "x-amz-sns-topic-arn",
                 "x-request-id"}


@dataclass(frozen=True)
class StoredDelivery:
    """The inbox row of a delivery, and whether this call created it."""

    id: int
    created: bool
    status: str


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return the headers stored with a delivery (no signatures or tokens)."""
    return {k.lower(): v for k, v in headers.items() if k.lower() in _KEPT_HEADERS}


_INSERTS: dict[str, Any] = {}
_INSERT_COLUMNS = ("source", "delivery_id", "event_type", "status", "contract_key", "body", "headers",
                   "normalized", "attempts", "error", "received_at")


def _insert_statement(dialect: str) -> Any:
    """Return the insert-unless-stored statement, built once per dialect (it is on the hot path)."""
    statement = _INSERTS.get(dialect)
    if statement is None:
        table = InboxRow.__table__
        insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
        statement = (insert.values({name: bindparam(name, type_=table.c[name].type) for name in _INSERT_COLUMNS})
                     .on_conflict_do_nothing(index_elements=["source", "delivery_id"])
                     .returning(table.c.id))
        _INSERTS[dialect] = statement
    return statement


def store_delivery(engine: Engine, *, source: str, delivery_id: str, event_type: str, body: bytes,
                   headers: Mapping[str, str], normalized: Mapping[str, Any] | None, status: str,
                   contract_key: str, now: datetime) -> StoredDelivery:
    """Insert the delivery unless (source, delivery id) is stored already; return its row.

    Deliveries that arrive together in one process share one transaction (see ``InboxWriter``).
    """
    values = {
        "source": source, "delivery_id": delivery_id, "event_type": event_type[:64],
        "status": status, "contract_key": contract_key[:255],
        "body": body.decode("utf-8", errors="replace"), "headers": kept_headers(headers),
        "normalized": dict(normalized or {}), "attempts": 0, "error": "", "received_at": now,
    }
    return _writer(engine).store(values)


def _store_one(conn: Any, statement: Any, values: dict[str, Any]) -> StoredDelivery:
    inserted = conn.execute(statement, values).first()
    if inserted is not None:
        return StoredDelivery(id=inserted.id, created=True, status=values["status"])
    # A repeated delivery: report the stored row, change nothing.
    table = InboxRow.__table__
    row = conn.execute(
        select(table.c.id, table.c.status).where(table.c.source == values["source"],
                                                 table.c.delivery_id == values["delivery_id"])
    ).one()
    return StoredDelivery(id=row.id, created=False, status=row.status)


class _Slot:
    __slots__ = ("values", "result", "error", "done")

    def __init__(self, values: dict[str, Any]):
        self.values = values
        self.result: StoredDelivery | None = None
        self.error: BaseException | None = None
        self.done = False


class InboxWriter:
    """Store the deliveries that arrive together in one process in one transaction (group commit).

    Request threads queue their row here; one at a time (the leader) takes everything queued,
    inserts it under ``write_lock`` in one transaction, commits, and wakes the others. Under load
    a commit carries several deliveries, so the lock hand-over and the commit are paid once per
    group rather than once per delivery. Every delivery still gets its own answer, only after
    the commit that stored it. If the group's transaction fails, each delivery is retried in a
    transaction of its own, so one bad row cannot fail the others.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._group: GroupCommit[_Slot] = GroupCommit(self._write)

    def store(self, values: dict[str, Any]) -> StoredDelivery:
        slot = _Slot(values)
        self._group.submit(slot)
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _write(self, group: list[_Slot]) -> None:
        statement = _insert_statement(self.engine.dialect.name)
        try:
            # SQLite: writers queue on a lock file instead of sleeping in the busy handler.
            with write_lock(self.engine), self.engine.begin() as conn:
                results = [_store_one(conn, statement, slot.values) for slot in group]
            for slot, result in zip(group, results):
                slot.result = result
        except Exception:
            if len(group) == 1:
                group[0].error = sys.exc_info()[1]  # raised again in its own request
            else:
                for slot in group:
                    try:
                        with write_lock(self.engine), self.engine.begin() as conn:
                            slot.result = _store_one(conn, statement, slot.values)
                    except Exception as exc:  # noqa: BLE001 - this delivery's own error, raised in its request
                        slot.error = exc
        for slot in group:
            slot.done = True


def _writer(engine: Engine) -> InboxWriter:
    return process_local(engine, "inbox_writer", lambda: InboxWriter(engine))


CLAIMABLE = (InboxStatus.RECEIVED, InboxStatus.PROCESSING, InboxStatus.FAILED, InboxStatus.DEFERRED)


def claim(engine: Engine, inbox_id: int, *, now: datetime, statuses: tuple[str, ...] = CLAIMABLE) -> InboxRow | None:
    """Move a row to ``processing`` (one attempt more) and return it; None if it is finished.

    ``statuses`` are the states it may be claimed from: the drain takes only ``received`` rows,
    so two drains never process one row; retries and the sweeper take stuck and failed ones too.
    """
    table = InboxRow.__table__
    with engine.begin() as conn:
        result = conn.execute(
            update(table)
            .where(table.c.id == inbox_id, table.c.status.in_(statuses))
            .values(status=InboxStatus.PROCESSING.value, attempts=table.c.attempts + 1)
        )
        if result.rowcount != 1:
            return None
        row = conn.execute(select(table).where(table.c.id == inbox_id)).one()
    return InboxRow(**row._mapping)


def finish(engine: Engine, inbox_id: int, status: str, *, now: datetime, error: str = "",
           contract_id: str | None = None, contract_key: str | None = None, final: bool = False) -> None:
    """Record the outcome of processing a row (and the contract key its processing resolved).

    ``final``: a failure that retrying cannot change; the sweeper leaves the row alone.
    """
    table = InboxRow.__table__
    values: dict[str, Any] = {"status": status, "error": error[:2000], "processed_at": now}
    if final:
        values["attempts"] = MAX_ATTEMPTS
    if contract_id:
        values["contract_id"] = contract_id
    if contract_key:
        values["contract_key"] = contract_key[:255]
    with engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == inbox_id).values(**values))


MAX_ATTEMPTS = 6


def stale_received(engine: Engine, *, now: datetime, older_than: timedelta = timedelta(seconds=30),
                   limit: int = 500) -> list[int]:
    """Return ids of rows to process again: never picked up, stuck ``processing``, or ``failed``
    (with a backoff of one minute per attempt made, at most ``MAX_ATTEMPTS`` attempts)."""
    table = InboxRow.__table__
    cutoff = now - older_than
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.id, table.c.status, table.c.attempts, table.c.processed_at)
            .where(((table.c.status.in_((InboxStatus.RECEIVED, InboxStatus.PROCESSING))) & (table.c.received_at < cutoff))
                   | ((table.c.status == InboxStatus.FAILED) & (table.c.attempts < MAX_ATTEMPTS)))
            .order_by(table.c.id)
            .limit(limit)
        ).all()
    out = []
    for r in rows:
        if r.status == InboxStatus.FAILED and r.processed_at is not None:
            last = r.processed_at if r.processed_at.tzinfo else r.processed_at.replace(tzinfo=now.tzinfo)
            if now - last < timedelta(minutes=r.attempts):
                continue
        out.append(r.id)
    return out


def received_ids(engine: Engine, *, limit: int) -> list[int]:
    """Return ids of rows waiting to be processed, oldest first."""
    table = InboxRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(select(table.c.id).where(table.c.status == InboxStatus.RECEIVED)
                            .order_by(table.c.id).limit(limit)).all()
    return [r.id for r in rows]


def deferred_for(engine: Engine, contract_key: str) -> list[int]:
    """Return ids of rows waiting for the contract ``contract_key`` to exist."""
    table = InboxRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.id)
            .where(table.c.status == InboxStatus.DEFERRED, table.c.contract_key == contract_key)
            .order_by(table.c.received_at, table.c.id)
        ).all()
    return [r.id for r in rows]


def history(engine: Engine, *, contract_id: str, contract_key: str) -> list[dict[str, Any]]:
    """Return the inbox rows of one contract, oldest first."""
    table = InboxRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.id, table.c.source, table.c.delivery_id, table.c.event_type, table.c.status,
                   table.c.attempts, table.c.error, table.c.received_at, table.c.processed_at)
            .where((table.c.contract_id == contract_id) | (table.c.contract_key == contract_key))
            .order_by(table.c.received_at, table.c.id)
        ).all()
    return [dict(r._mapping) for r in rows]
