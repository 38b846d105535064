"""Rows and repositories for customers, events and metrics (Alembic branch ``billing_events``).

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
import os
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Generic, Iterator, Mapping, Sequence, TypeVar

try:  # POSIX only; elsewhere SQLite's own busy handler serializes writers.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.backfills import Backfill, BackfillNotFound
from billing_core.customers import Customer, CustomerNotFound, DuplicateCustomer
from billing_core.events import (
    Event,
    EventNotFound,
    IdempotencyConflict,
    Record,
    from_micros,
    same_body,
    to_micros,
)
from billing_core.metrics import (
    Metric,
    MetricNotFound,
    definition_from_dict,
    definition_to_dict,
)
from billing_core.persistence.locks import begin_write

__all__ = [
    "GroupCommit",
    "GroupCommitWriter",
    "write_lock",
    "CustomerRow",
    "EventRow",
    "MetricRow",
    "SqlCustomerRepository",
    "SqlEventStore",
    "SqlMetricRepository",
    "events_table",
]

STATE_LIVE, STATE_SUPERSEDED, STATE_DEPRECATED = 0, 1, 2
STATE_BACKFILL_PENDING, STATE_REPLACED, STATE_REVERTED = 3, 4, 5
_READ_AS_DEPRECATED = (STATE_DEPRECATED, STATE_REPLACED, STATE_REVERTED)

_JSON_TEXT = sa.Text().with_variant(JSONB(), "postgresql")
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class CustomerRow(SQLModel, table=True):
    """A customer row."""

    __tablename__ = "customers"
    __table_args__ = (sa.UniqueConstraint("external_customer_id", name="uq_customers_external_customer_id"),)

    id: str = Field(primary_key=True, max_length=64)
    external_customer_id: str | None = Field(default=None, max_length=255)
    name: str
    email: str
    currency: str | None = Field(default=None, max_length=3)
    timezone: str = Field(default="UTC", max_length=64)
    metadata_json: str = Field(default="{}", sa_column=sa.Column("metadata", sa.Text, nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Customer:
        """Return the domain customer."""
        return Customer(
            id=self.id,
            name=self.name,
            email=self.email,
            created_at=_utc(self.created_at),
            external_customer_id=self.external_customer_id,
            currency=self.currency,
            timezone=self.timezone,
            metadata=json.loads(self.metadata_json or "{}"),
        )

    @classmethod
    def from_domain(cls, customer: Customer) -> "CustomerRow":
        """Build a row from a domain customer."""
        return cls(
            id=customer.id,
            external_customer_id=customer.external_customer_id,
            name=customer.name,
            email=customer.email,
            currency=customer.currency,
            timezone=customer.timezone,
            metadata_json=json.dumps(dict(customer.metadata), sort_keys=True),
            created_at=customer.created_at,
        )


class MetricRow(SQLModel, table=True):
    """A metric row: the definition is stored as JSON next to its SQL text."""

    __tablename__ = "metrics"

    id: str = Field(primary_key=True, max_length=64)
    name: str
    description: str | None = None
    item_id: str | None = Field(default=None, max_length=64)
    sql: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    definition_json: str = Field(sa_column=sa.Column("definition", sa.Text, nullable=False))
    metadata_json: str = Field(default="{}", sa_column=sa.Column("metadata", sa.Text, nullable=False))
    status: str = Field(default="active", max_length=16)
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))

    def to_domain(self) -> Metric:
        """Return the domain metric."""
        return Metric(
            id=self.id,
            name=self.name,
            definition=definition_from_dict(json.loads(self.definition_json)),
            sql=self.sql,
            created_at=_utc(self.created_at),
            item_id=self.item_id,
            description=self.description,
            metadata=json.loads(self.metadata_json or "{}"),
            status=self.status,  # type: ignore[arg-type]
        )

    @classmethod
    def from_domain(cls, metric: Metric) -> "MetricRow":
        """Build a row from a domain metric."""
        return cls(
            id=metric.id,
            name=metric.name,
            description=metric.description,
            item_id=metric.item_id,
            sql=metric.sql,
            definition_json=json.dumps(definition_to_dict(metric.definition), sort_keys=True),
            metadata_json=json.dumps(dict(metric.metadata), sort_keys=True),
            status=metric.status,
            created_at=metric.created_at,
        )


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


class BackfillRow(SQLModel, table=True):
    """A backfill window and its state."""

    __tablename__ = "backfills"

    id: str = Field(primary_key=True, max_length=64)
    customer_id: str | None = Field(default=None, max_length=64)
    timeframe_start: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    timeframe_end: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    replace_existing_events: bool = False
    status: str = Field(default="pending", max_length=16)
    events_ingested: int = 0
    created_at: datetime = Field(sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False, index=True))
    close_time: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))
    reverted_at: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))

    def to_domain(self) -> Backfill:
        """Return the domain backfill."""
        return Backfill(
            id=self.id,
            timeframe_start=from_micros(self.timeframe_start),
            timeframe_end=from_micros(self.timeframe_end),
            created_at=_utc(self.created_at),
            customer_id=self.customer_id,
            replace_existing_events=self.replace_existing_events,
            status=self.status,  # type: ignore[arg-type]
            close_time=_utc(self.close_time) if self.close_time else None,
            reverted_at=_utc(self.reverted_at) if self.reverted_at else None,
            events_ingested=self.events_ingested,
        )

    @classmethod
    def from_domain(cls, backfill: Backfill) -> "BackfillRow":
        """Build a row from a domain backfill."""
        return cls(
            id=backfill.id,
            customer_id=backfill.customer_id,
            timeframe_start=to_micros(backfill.timeframe_start),
            timeframe_end=to_micros(backfill.timeframe_end),
            replace_existing_events=backfill.replace_existing_events,
            status=backfill.status,
            events_ingested=backfill.events_ingested,
            created_at=backfill.created_at,
            close_time=backfill.close_time,
            reverted_at=backfill.reverted_at,
        )


class BackfillReplacementRow(SQLModel, table=True):
    """An event a closed backfill replaced (so that reverting the backfill restores it)."""

    __tablename__ = "backfill_replacements"

    backfill_id: str = Field(primary_key=True, max_length=64)
    event_seq: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))


events_table: sa.Table = EventRow.__table__  # type: ignore[attr-defined]
customers_table: sa.Table = CustomerRow.__table__  # type: ignore[attr-defined]


# Writers -------------------------------------------------------------------------------------


@contextmanager
def write_lock(engine: sa.Engine) -> Iterator[None]:
    """Serialize SQLite writers of this database across processes (a no-op elsewhere).

    SQLite lets one writer in at a time and makes the others poll with sleeps of 1 to 100 ms;
    an exclusive ``flock`` on a file next to the database wakes the next writer the moment the
    previous one commits instead. Hold it around the transaction only, never around validation.
    """
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or fcntl is None:
        yield
        return
    with _guard:
        # Keyed by pid: a forked child must open its own file, or parent and child share the lock.
        fd = _lock_fds.get((os.getpid(), database))
        if fd is None:
            fd = os.open(database + ".write-lock", os.O_RDWR | os.O_CREAT, 0o600)
            _lock_fds[(os.getpid(), database)] = fd
        thread_lock = _thread_locks.setdefault(database, threading.Lock())
    with thread_lock:  # flock is per open file: threads of one process queue here first
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


_guard = threading.Lock()
_lock_fds: dict[tuple[int, str], int] = {}
_thread_locks: dict[str, threading.Lock] = {}


_S = TypeVar("_S")


class GroupCommit(Generic[_S]):
    """Leader/follower group commit for the request threads of one process.

    ``submit`` queues a slot (anything with a ``done`` flag). One caller at a time, the leader,
    takes every slot queued so far and hands them to ``write``, which must set ``done`` on each;
    the others find their slot done when the leader lets them in. Under load one transaction
    carries many slots; alone, a caller writes its own.
    """

    def __init__(self, write: Callable[[list[_S]], None]):
        self._write = write
        self._mutex = threading.Lock()
        self._leader = threading.Lock()
        self._pending: list[_S] = []

    def submit(self, slot: _S) -> None:
        with self._mutex:
            self._pending.append(slot)
        with self._leader:
            if not slot.done:  # type: ignore[attr-defined]
                with self._mutex:
                    group, self._pending = self._pending, []
                self._write(group)


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
        from billing_core.events import EventValidationFailed, store_records

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


# Customers -----------------------------------------------------------------------------------


class SqlCustomerRepository:
    """Customers in the database, through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, customer: Customer) -> Customer:
        """Insert a customer (DuplicateCustomer when the external id is taken)."""
        if customer.external_customer_id is not None:
            taken = self.session.execute(
                sa.select(customers_table.c.id).where(
                    customers_table.c.external_customer_id == customer.external_customer_id
                )
            ).first()
            if taken is not None:
                raise DuplicateCustomer(
                    f"external_customer_id {customer.external_customer_id!r} is already used by customer {taken[0]}",
                    field="external_customer_id",
                )
        self.session.add(CustomerRow.from_domain(customer))
        self.session.flush()
        return customer

    def get(self, customer_id: str, *, for_update: bool = False) -> Customer:
        """Return the customer with this id (``for_update``: locked until commit, see ``locks``)."""
        if for_update:
            begin_write(self.session)
        row = self.session.get(CustomerRow, customer_id, with_for_update=for_update, populate_existing=for_update)
        if row is None:
            raise CustomerNotFound(f"no customer with id {customer_id!r}")
        return row.to_domain()

    def get_by_external_id(self, external_customer_id: str, *, for_update: bool = False) -> Customer:
        """Return the customer with this external id (``for_update``: locked until commit)."""
        query = sa.select(CustomerRow).where(CustomerRow.external_customer_id == external_customer_id)  # type: ignore[arg-type]
        if for_update:
            begin_write(self.session)
            query = query.with_for_update().execution_options(populate_existing=True)
        row = self.session.execute(query).scalar_one_or_none()
        if row is None:
            raise CustomerNotFound(f"no customer with external_customer_id {external_customer_id!r}")
        return row.to_domain()

    def save(self, customer: Customer) -> Customer:
        """Store changes to an existing customer."""
        row = self.session.get(CustomerRow, customer.id)
        if row is None:
            raise CustomerNotFound(f"no customer with id {customer.id!r}")
        if customer.external_customer_id and customer.external_customer_id != row.external_customer_id:
            other = self.session.execute(
                sa.select(customers_table.c.id).where(
                    customers_table.c.external_customer_id == customer.external_customer_id
                )
            ).first()
            if other is not None:
                raise DuplicateCustomer(
                    f"external_customer_id {customer.external_customer_id!r} is already used by customer {other[0]}",
                    field="external_customer_id",
                )
        fresh = CustomerRow.from_domain(customer)
        for name in ("external_customer_id", "name", "email", "currency", "metadata_json"):
            setattr(row, name, getattr(fresh, name))
        self.session.flush()
        return customer

    def list(
        self, *, limit: int, cursor: str | None = None, created_at: Mapping[str, datetime] | None = None
    ) -> tuple[list[Customer], str | None]:
        """Return customers newest first, and the cursor of the next page (None at the end)."""
        return _page(self.session, CustomerRow, limit, cursor, created_at)


def _page(session: Session, row_type: Any, limit: int, cursor: str | None,
          created_at: Mapping[str, datetime] | None, extra: Sequence[Any] = ()) -> tuple[list[Any], str | None]:
    table = row_type.__table__
    query = sa.select(row_type).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit + 1)
    for condition in extra:
        query = query.where(condition)
    ops = {"gt": "__gt__", "gte": "__ge__", "lt": "__lt__", "lte": "__le__"}
    for op, value in (created_at or {}).items():
        query = query.where(getattr(table.c.created_at, ops[op])(value))
    if cursor:
        anchor = session.get(row_type, cursor)
        if anchor is None:
            from billing_core.errors import InvalidInput

            raise InvalidInput(f"cursor: {cursor!r} is not a cursor of this list", field="cursor")
        else:
            query = query.where(
                sa.or_(
                    table.c.created_at < anchor.created_at,
                    sa.and_(table.c.created_at == anchor.created_at, table.c.id < anchor.id),
                )
            )
    rows = list(session.execute(query).scalars())
    has_more = len(rows) > limit
    rows = rows[:limit]
    return [r.to_domain() for r in rows], (rows[-1].id if has_more and rows else None)


# Metrics -------------------------------------------------------------------------------------


class SqlMetricRepository:
    """Metrics in the database, through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, metric: Metric) -> Metric:
        """Insert a metric."""
        self.session.add(MetricRow.from_domain(metric))
        self.session.flush()
        return metric

    def get(self, metric_id: str, *, for_update: bool = False) -> Metric:
        """Return the metric with this id (``for_update``: locked until commit, see ``locks``)."""
        if for_update:
            begin_write(self.session)
        row = self.session.get(MetricRow, metric_id, with_for_update=for_update, populate_existing=for_update)
        if row is None:
            raise MetricNotFound(f"no metric with id {metric_id!r}")
        return row.to_domain()

    def save(self, metric: Metric) -> Metric:
        """Store a metric's name, description, metadata or status (its definition never changes)."""
        row = self.session.get(MetricRow, metric.id)
        if row is None:
            raise MetricNotFound(f"no metric with id {metric.id!r}")
        fresh = MetricRow.from_domain(metric)
        for name in ("name", "description", "metadata_json", "status"):
            setattr(row, name, getattr(fresh, name))
        self.session.flush()
        return metric

    def list(
        self, *, limit: int, cursor: str | None = None, created_at: Mapping[str, datetime] | None = None,
        status: str | None = None,
    ) -> tuple[list[Metric], str | None]:
        """Return metrics newest first, and the cursor of the next page (None at the end)."""
        extra = [MetricRow.__table__.c.status == status] if status else []  # type: ignore[attr-defined]
        return _page(self.session, MetricRow, limit, cursor, created_at, extra)


# Events --------------------------------------------------------------------------------------

_INSERT_COLUMNS = "idempotency_key, event_name, customer_id, external_customer_id, ts, properties"


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
        from billing_core.events import EventValidationFailed

        row = self._current_row(idempotency_key)
        if row.state == STATE_DEPRECATED:
            raise EventValidationFailed([(idempotency_key, ["event: deprecated events cannot be amended"])])
        if row.state != STATE_LIVE:
            raise EventValidationFailed([(idempotency_key, ["event: only live events can be amended (it is in a backfill or replaced by one)"])])
        t = events_table
        self.session.execute(sa.update(t).where(t.c.seq == row.seq).values(state=STATE_SUPERSEDED))
        (resolved,) = self._resolve([record])
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
        from dataclasses import replace

        return [
            replace(e, customer_id=known[e.external_customer_id])
            if e.customer_id is None and e.external_customer_id in known else e
            for e in events
        ]


# Backfills -----------------------------------------------------------------------------------


class SqlBackfillStore:
    """Backfills in the database, through the caller's session."""

    def __init__(self, session: Session):
        self.session = session

    def add(self, backfill: Backfill) -> Backfill:
        """Insert a backfill."""
        self.session.add(BackfillRow.from_domain(backfill))
        self.session.flush()
        return backfill

    def get(self, backfill_id: str) -> Backfill:
        """Return the backfill with this id."""
        row = self.session.get(BackfillRow, backfill_id)
        if row is None:
            raise BackfillNotFound(f"no backfill with id {backfill_id!r}")
        return row.to_domain()

    def save(self, backfill: Backfill) -> Backfill:
        """Store a backfill's new state."""
        row = self.session.get(BackfillRow, backfill.id)
        if row is None:
            raise BackfillNotFound(f"no backfill with id {backfill.id!r}")
        fresh = BackfillRow.from_domain(backfill)
        for name in ("status", "events_ingested", "close_time", "reverted_at"):
            setattr(row, name, getattr(fresh, name))
        self.session.flush()
        return backfill

    def list(self, *, limit: int, cursor: str | None = None) -> tuple[list[Backfill], str | None]:
        """Return backfills newest first, and the cursor of the next page."""
        return _page(self.session, BackfillRow, limit, cursor, None)

    def _window(self, backfill: Backfill) -> list[Any]:
        e = events_table
        where = [e.c.ts >= to_micros(backfill.timeframe_start), e.c.ts < to_micros(backfill.timeframe_end)]
        if backfill.customer_id is not None:
            alias = self.session.execute(
                sa.select(customers_table.c.external_customer_id).where(customers_table.c.id == backfill.customer_id)
            ).scalar_one_or_none()
            owner = e.c.customer_id == backfill.customer_id
            if alias:
                owner = sa.or_(owner, sa.and_(e.c.customer_id.is_(None), e.c.external_customer_id == alias))
            where.append(owner)
        return where

    def reflect(self, backfill: Backfill) -> None:
        """Make the backfill's events live; retire the window's live events when it replaces them."""
        e = events_table
        if backfill.replace_existing_events:
            replaced = sa.select(sa.literal(backfill.id), e.c.seq).where(
                *self._window(backfill), e.c.state == STATE_LIVE
            )
            r = BackfillReplacementRow.__table__  # type: ignore[attr-defined]
            self.session.execute(sa.insert(r).from_select(["backfill_id", "event_seq"], replaced))
            self.session.execute(
                sa.update(e)
                .where(e.c.seq.in_(sa.select(r.c.event_seq).where(r.c.backfill_id == backfill.id)))
                .values(state=STATE_REPLACED)
            )
        self.session.execute(
            sa.update(e)
            .where(e.c.backfill_id == backfill.id, e.c.state == STATE_BACKFILL_PENDING)
            .values(state=STATE_LIVE)
        )

    def unreflect(self, backfill: Backfill) -> None:
        """Retire the backfill's events and restore the events it replaced."""
        e = events_table
        r = BackfillReplacementRow.__table__  # type: ignore[attr-defined]
        self.session.execute(
            sa.update(e)
            .where(e.c.backfill_id == backfill.id, e.c.state.in_([STATE_LIVE, STATE_BACKFILL_PENDING]))
            .values(state=STATE_REVERTED)
        )
        self.session.execute(
            sa.update(e)
            .where(e.c.seq.in_(sa.select(r.c.event_seq).where(r.c.backfill_id == backfill.id)),
                   e.c.state == STATE_REPLACED)
            .values(state=STATE_LIVE)
        )

    def customer_alias(self, customer_id: str | None) -> str | None:
        """Return the external id of the backfill's customer, if any."""
        if customer_id is None:
            return None
        return self.session.execute(
            sa.select(customers_table.c.external_customer_id).where(customers_table.c.id == customer_id)
        ).scalar_one_or_none()
