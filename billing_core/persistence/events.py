"""Rows and store of usage events (Alembic branch ``billing_events``), and the ingest group commit.

``events`` is append-only: a body, once written, is never updated. The one column that changes
is ``state`` — the read-path overlay of corrections: 0 live, 1 superseded by an amendment (a
newer version of the same ``idempotency_key`` is stored as a new row), 2 deprecated, 3 in a
pending backfill, 4 replaced by a closed backfill, 5 in a reverted backfill. Metrics read
``state = 0`` only.

Columns chosen for ingest speed and exactness on both databases:

- ``ts`` is the event instant in integer microseconds since the Unix epoch (UTC);
- ``properties`` is the JSON text exactly as validated (SQLite ``TEXT``; PostgreSQL ``JSONB``,
  whose numbers are ``numeric``), so no number is ever turned into a float at rest;
- ``customer_id`` is filled at ingest when the event's customer is known; events sent with an
  unknown ``external_customer_id`` keep ``customer_id`` NULL and are matched through the alias
  at query time (a partial index covers exactly those rows).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.events import (
    Event,
    EventNotFound,
    EventValidationFailed,
    IdempotencyConflict,
    Record,
    from_micros,
    same_body,
    store_records,
    to_micros,
)
from billing_core.fragments import FINEST
from billing_core.persistence.customers import customers_table
from billing_core.persistence.fragments import Change, log_changes
from billing_core.persistence.writes import GroupCommit, write_lock

__all__ = [
    "EventRow",
    "GroupCommitWriter",
    "SqlEventStore",
    "count_customer_events_since",
    "events_table",
]

STATE_LIVE, STATE_SUPERSEDED, STATE_DEPRECATED = 0, 1, 2
STATE_BACKFILL_PENDING, STATE_REPLACED, STATE_REVERTED = 3, 4, 5
_READ_AS_DEPRECATED = (STATE_DEPRECATED, STATE_REPLACED, STATE_REVERTED)

_JSON_TEXT = sa.Text().with_variant(JSONB(), "postgresql")
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class EventRow(SQLModel, table=True):
    """One stored version of an event (see the module docstring for the columns)."""

    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("idempotency_key", "version", name="uq_events_key_version"),
        sa.Index("ix_events_customer_name_ts", "customer_id", "event_name", "ts"),
        sa.Index(
            "ix_events_unresolved_name_ts",
            "external_customer_id",
            "event_name",
            "ts",
            sqlite_where=sa.text("customer_id IS NULL"),
            postgresql_where=sa.text("customer_id IS NULL"),
        ),
        sa.Index(
            "ix_events_backfill",
            "backfill_id",
            sqlite_where=sa.text("backfill_id IS NOT NULL"),
            postgresql_where=sa.text("backfill_id IS NOT NULL"),
        ),
    )

    seq: int | None = Field(default=None, sa_column=sa.Column(_BIGINT_PK, primary_key=True, autoincrement=True))
    idempotency_key: str = Field(max_length=255)
    version: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    event_name: str = Field(max_length=255)
    customer_id: str | None = Field(default=None, max_length=64)
    external_customer_id: str | None = Field(default=None, max_length=255)
    ts: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    properties: str = Field(sa_column=sa.Column(_JSON_TEXT, nullable=False))
    state: int = Field(default=0, sa_column=sa.Column(sa.SmallInteger, nullable=False, server_default="0"))
    backfill_id: str | None = Field(default=None, max_length=64)


events_table: sa.Table = EventRow.__table__  # type: ignore[attr-defined]

_INSERT_COLUMNS = "idempotency_key, event_name, customer_id, external_customer_id, ts, properties"


def _change(customer_id: str | None, external_customer_id: str | None, event_name: str, ts: int) -> Change:
    """The change log entry of one event's finest bucket (by customer id, else by its external id)."""
    bucket = ts - ts % FINEST
    return (customer_id, None if customer_id else external_customer_id, event_name, bucket, bucket + FINEST)


class SqlEventStore:
    """Events in the database, through the caller's session (one transaction per batch)."""

    def __init__(self, session: Session):
        self.session = session
        self.dialect = session.get_bind().dialect.name

    def unknown_customer_ids(self, customer_ids: set[str]) -> set[str]:
        """Return those of ``customer_ids`` that name no customer."""
        found = self.session.execute(
            sa.select(customers_table.c.id).where(customers_table.c.id.in_(sorted(customer_ids)))
        ).scalars()
        return set(customer_ids) - set(found)

    def existing_keys(self, keys: Sequence[Any]) -> set[str]:
        """Return those of ``keys`` already stored."""
        wanted = sorted({k for k in keys if isinstance(k, str)})
        found: set[str] = set()
        t = events_table
        for start in range(0, len(wanted), 500):
            found.update(
                self.session.execute(
                    sa.select(t.c.idempotency_key).where(
                        t.c.idempotency_key.in_(wanted[start:start + 500]), t.c.version == 0
                    )
                ).scalars()
            )
        return found

    def _resolve(self, records: list[Record]) -> list[Record]:
        aliases = {r[3] for r in records if r[3] is not None}
        if not aliases:
            return records
        known = dict(
            self.session.execute(
                sa.select(customers_table.c.external_customer_id, customers_table.c.id).where(
                    customers_table.c.external_customer_id.in_(sorted(aliases))
                )
            ).all()
        )
        if not known:
            return records
        return [
            (r[0], r[1], known.get(r[3]), r[3], r[4], r[5]) if r[3] in known else r for r in records
        ]

    def append(self, records: list[Record], *, backfill_id: str | None = None) -> int:
        """Insert new events in one statement; verify any key that was already stored.

        Returns how many events were new. Raises ``IdempotencyConflict`` (the caller's
        transaction is rolled back, so nothing of the batch stays) when a stored event with one
        of the keys has a different body.
        """
        resolved: list[Any] = self._resolve(records)
        conn = self.session.connection()
        columns, marks = _INSERT_COLUMNS, 6
        if backfill_id is not None:
            # Events of a pending backfill are stored now and counted when it is closed.
            columns += ", state, backfill_id"
            marks += 2
            resolved = [r + (STATE_BACKFILL_PENDING, backfill_id) for r in resolved]
        if self.dialect == "postgresql":
            values = ", ".join(["%s"] * 5 + ["%s::jsonb"] + ["%s"] * (marks - 6))
        else:
            values = ", ".join(["?"] * marks)
        sql = f"INSERT INTO events ({columns}) VALUES ({values}) ON CONFLICT (idempotency_key, version) DO NOTHING"
        pooled = conn.connection
        if self.dialect == "sqlite" and not pooled.info.get("events_cache"):
            # Index pages of a large events table stay in memory (64 MiB instead of SQLite's 2 MiB),
            # and checkpoints (each one an fsync) run every ~40 MiB of WAL instead of every 4 MiB.
            pooled.driver_connection.execute("PRAGMA cache_size=-65536")  # type: ignore[union-attr]
            pooled.driver_connection.execute("PRAGMA wal_autocheckpoint=10000")  # type: ignore[union-attr]
            pooled.info["events_cache"] = True
        cursor = pooled.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, resolved)
            inserted = cursor.rowcount
        finally:
            cursor.close()
        if backfill_id is None:  # a pending backfill's events count when it is closed
            log_changes(self.session, (_change(r[2], r[3], r[1], r[4]) for r in resolved))
        if inserted < len(resolved):
            self._verify(records)
        return inserted

    def _verify(self, records: list[Record]) -> None:
        t = events_table
        stored: dict[str, Record] = {}
        keys = [r[0] for r in records]
        for start in range(0, len(keys), 500):
            rows = self.session.execute(
                sa.select(
                    t.c.idempotency_key, t.c.event_name, t.c.customer_id, t.c.external_customer_id,
                    t.c.ts, self._properties_text(),
                ).where(t.c.idempotency_key.in_(keys[start:start + 500]), t.c.version == 0)
            ).all()
            stored.update({row[0]: tuple(row) for row in rows})  # type: ignore[misc]
        for record in records:
            existing = stored.get(record[0])
            if existing is None:
                continue
            # An alias resolved at ingest is not part of what was sent: events carry exactly one
            # of customer_id / external_customer_id.
            if existing[3] is not None:
                existing = (existing[0], existing[1], None, existing[3], existing[4], existing[5])
            if not same_body(existing, None, record, None):
                raise IdempotencyConflict(record[0], "against a stored event")

    def _properties_text(self) -> Any:
        column = events_table.c.properties
        return sa.cast(column, sa.Text) if self.dialect == "postgresql" else column

    def _row_to_event(self, row: Any) -> Event:
        return Event(
            idempotency_key=row.idempotency_key,
            event_name=row.event_name,
            timestamp=from_micros(row.ts),
            properties=json.loads(row.properties, parse_float=Decimal),
            customer_id=row.customer_id,
            external_customer_id=row.external_customer_id,
            deprecated=row.state in _READ_AS_DEPRECATED,
            version=row.version,
        )

    def _select_events(self) -> Any:
        t = events_table
        return sa.select(
            t.c.seq, t.c.idempotency_key, t.c.version, t.c.event_name, t.c.customer_id,
            t.c.external_customer_id, t.c.ts, self._properties_text().label("properties"), t.c.state,
        )

    def _current_row(self, idempotency_key: str) -> Any:
        t = events_table
        row = self.session.execute(
            self._select_events()
            .where(t.c.idempotency_key == idempotency_key)
            .order_by(t.c.version.desc())
            .limit(1)
        ).first()
        if row is None:
            raise EventNotFound(f"no event with id {idempotency_key!r}")
        return row

    def current(self, idempotency_key: str) -> Event:
        """Return the current version of an event."""
        return self._with_customer([self._row_to_event(self._current_row(idempotency_key))])[0]

    def amend(self, idempotency_key: str, record: Record) -> Event:
        """Store a new version of the event and supersede the current one."""
        row = self._current_row(idempotency_key)
        if row.state == STATE_DEPRECATED:
            raise EventValidationFailed([(idempotency_key, ["event: deprecated events cannot be amended"])])
        if row.state != STATE_LIVE:
            raise EventValidationFailed([(idempotency_key, ["event: only live events can be amended (it is in a backfill or replaced by one)"])])
        t = events_table
        self.session.execute(sa.update(t).where(t.c.seq == row.seq).values(state=STATE_SUPERSEDED))
        (resolved,) = self._resolve([record])
        log_changes(self.session, [_change(row.customer_id, row.external_customer_id, row.event_name, row.ts),
                                   _change(resolved[2], resolved[3], resolved[1], resolved[4])])
        properties: Any = resolved[5]
        if self.dialect == "postgresql":
            properties = sa.cast(sa.literal(resolved[5], sa.Text), JSONB)
        self.session.execute(
            sa.insert(t).values(
                idempotency_key=idempotency_key, version=row.version + 1, event_name=resolved[1],
                customer_id=resolved[2], external_customer_id=resolved[3], ts=resolved[4],
                properties=properties, state=STATE_LIVE,
            )
        )
        return self.current(idempotency_key)

    def deprecate(self, idempotency_key: str) -> Event:
        """Mark the current version deprecated (a no-op when it already is)."""
        row = self._current_row(idempotency_key)
        if row.state != STATE_DEPRECATED:
            t = events_table
            self.session.execute(sa.update(t).where(t.c.seq == row.seq).values(state=STATE_DEPRECATED))
            log_changes(self.session, [_change(row.customer_id, row.external_customer_id, row.event_name, row.ts)])
        return self.current(idempotency_key)

    def search(
        self, event_ids: Sequence[str], *, start: int | None = None, end: int | None = None, limit: int = 500
    ) -> list[Event]:
        """Return the current versions of the named events with ``start <= ts < end`` (µs)."""
        if not event_ids:
            return []
        t = events_table
        latest = (
            sa.select(t.c.idempotency_key, sa.func.max(t.c.version).label("version"))
            .where(t.c.idempotency_key.in_(list(event_ids)))
            .group_by(t.c.idempotency_key)
            .subquery()
        )
        query = (
            self._select_events()
            .join(latest, sa.and_(latest.c.idempotency_key == t.c.idempotency_key, latest.c.version == t.c.version))
            .order_by(t.c.ts, t.c.idempotency_key)
            .limit(limit)
        )
        if start is not None:
            query = query.where(t.c.ts >= start)
        if end is not None:
            query = query.where(t.c.ts < end)
        return self._with_customer([self._row_to_event(row) for row in self.session.execute(query)])

    def _with_customer(self, events: list[Event]) -> list[Event]:
        """Fill ``customer_id`` for events whose alias names a customer created since."""
        aliases = {e.external_customer_id for e in events if e.customer_id is None and e.external_customer_id}
        if not aliases:
            return events
        known = dict(
            self.session.execute(
                sa.select(customers_table.c.external_customer_id, customers_table.c.id).where(
                    customers_table.c.external_customer_id.in_(sorted(aliases))
                )
            ).all()
        )
        return [
            replace(e, customer_id=known[e.external_customer_id])
            if e.customer_id is None and e.external_customer_id in known else e
            for e in events
        ]


def count_customer_events_since(session: Session, customer_id: str, since: datetime) -> int:
    """Count the distinct events (any state) stored for ``customer_id`` at or after ``since``."""
    t = events_table
    return int(session.execute(
        sa.select(sa.func.count(sa.func.distinct(t.c.idempotency_key))).where(
            t.c.customer_id == customer_id, t.c.ts >= to_micros(since))
    ).scalar_one())


# Ingest group commit ----------------------------------------------------------------------------


class GroupCommitWriter:
    """Commit the ingest batches that arrive together in one process in one SQLite transaction.

    Request threads validate in parallel, then queue their records here. One thread at a time
    (the leader) takes everything queued, writes it under ``write_lock`` in one transaction and
    wakes the others: under load a commit carries several batches, so the per-commit cost (the
    index pages a batch touches, the WAL append, the lock hand-over) is shared. Each batch keeps
    its own outcome: a batch that fails (an idempotency conflict, an unknown customer) has its
    rows removed inside the transaction before it commits, so nothing of it is ever stored, and
    the other batches are not affected.
    """

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._group: GroupCommit[_Slot] = GroupCommit(self._commit)

    def submit(self, records: list[Record], *, sent: int) -> Any:
        """Store one validated batch; return its ``IngestResult`` or raise its error."""
        slot = _Slot(records, sent)
        self._group.submit(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _commit(self, group: list["_Slot"]) -> None:
        t = events_table
        try:
            with write_lock(self.engine), Session(self.engine, expire_on_commit=False) as session:
                store = SqlEventStore(session)
                for slot in group:
                    before = session.execute(sa.select(sa.func.coalesce(sa.func.max(t.c.seq), 0))).scalar_one()
                    try:
                        slot.result = store_records(store, slot.records, sent=slot.sent)
                    except (EventValidationFailed, IdempotencyConflict) as exc:
                        # Remove this batch's rows only: its keys, first versions, written after ``before``
                        # (a key another batch of the group stored first has a lower seq and stays).
                        keys = [r[0] for r in slot.records]
                        session.execute(
                            sa.delete(t).where(t.c.seq > before, t.c.version == 0, t.c.idempotency_key.in_(keys))
                        )
                        slot.error = exc
                session.commit()
        except Exception as exc:  # the transaction failed: no batch of the group was stored
            for slot in group:
                if slot.error is None:
                    slot.result, slot.error = None, exc
        for slot in group:
            slot.done = True


class _Slot:
    __slots__ = ("records", "sent", "result", "error", "done")

    def __init__(self, records: list[Record], sent: int):
        self.records = records
        self.sent = sent
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
