"""Rows of usage fragments and of the usage change log (Alembic branch ``billing_events``).

``usage_changes`` is the invalidation log: every write that moves usage appends, in its own
transaction, which customer (or external id), event name and time range it touched; ``NULL``
means "any". ``usage_fragment_buckets`` records each computed bucket (also when it held no
event) with the log position it is current as of; ``usage_fragments`` holds its partials, one per
group value. A bucket is stale when a change after its position overlaps it.

Positions are commit-ordered: on SQLite writers are serialized by the database; on PostgreSQL
every change-log insert holds a transaction-level advisory lock until its commit, and a reader
takes the same lock shared before it reads the newest position, so every change at or below a
position read is committed and visible to the reader's next query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.fragments import Partial
from billing_core.persistence.writes import write_lock

__all__ = [
    "Change", "FragmentBucketRow", "FragmentRow", "UsageChangeRow", "changes_since", "load_fragments",
    "log_changes", "newest_change", "save_fragments",
]

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_LOCK_KEY = 7_470_201  # pg_advisory lock of the change log (an arbitrary constant of this project)
_SAVE_LOCK_KEY = 7_470_202

# (customer_id, external_customer_id, event_name, start, end): None is "any"
Change = tuple[str | None, str | None, str | None, int | None, int | None]


class UsageChangeRow(SQLModel, table=True):
    """One write that moved usage: whose, which event name, which instants (None: any)."""

    __tablename__ = "usage_changes"
    __table_args__ = (
        sa.Index("ix_usage_changes_customer", "customer_id", "id"),
        sa.Index("ix_usage_changes_external", "external_customer_id", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(_BIGINT_PK, primary_key=True, autoincrement=True))
    customer_id: str | None = Field(default=None, max_length=64)
    external_customer_id: str | None = Field(default=None, max_length=255)
    event_name: str | None = Field(default=None, max_length=255)
    ts_start: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    ts_end: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))


class FragmentBucketRow(SQLModel, table=True):
    """A computed bucket of one metric (and grouping) for one customer, current as of ``computed_change``."""

    __tablename__ = "usage_fragment_buckets"

    metric_id: str = Field(primary_key=True, max_length=64)
    group_by: str = Field(primary_key=True, max_length=1024)
    customer_id: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    bucket: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    computed_change: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class FragmentRow(SQLModel, table=True):
    """The partial of one group value in a computed bucket (``group_key`` is ``""`` without grouping)."""

    __tablename__ = "usage_fragments"

    metric_id: str = Field(primary_key=True, max_length=64)
    group_by: str = Field(primary_key=True, max_length=1024)
    customer_id: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    bucket: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    group_key: str = Field(primary_key=True, max_length=1024)
    count: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    with_value: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    total: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    maximum: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    latest_ts: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    latest_seq: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    latest_value: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))


changes_table: sa.Table = UsageChangeRow.__table__  # type: ignore[attr-defined]
buckets_table: sa.Table = FragmentBucketRow.__table__  # type: ignore[attr-defined]
fragments_table: sa.Table = FragmentRow.__table__  # type: ignore[attr-defined]


def _is_postgres(bind: Any) -> bool:
    return bind.dialect.name == "postgresql"


def log_changes(session: Session, changes: Iterable[Change]) -> None:
    """Append ``changes`` (deduplicated) to the log in the caller's transaction."""
    rows = sorted(set(changes), key=repr)
    if not rows:
        return
    bind = session.get_bind()
    if _is_postgres(bind):
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    session.execute(sa.insert(changes_table), [
        {"customer_id": c, "external_customer_id": x, "event_name": n, "ts_start": s, "ts_end": e}
        for c, x, n, s, e in rows
    ])


def newest_change(conn: Any) -> int:
    """Return the newest log position; every change at or below it is committed (see the module doc)."""
    if _is_postgres(conn):
        conn.execute(sa.text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": _LOCK_KEY})
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(changes_table.c.id), 0))).scalar_one())


def changes_since(conn: Any, position: int, customer_ids: Sequence[str], aliases: Sequence[str],
                  event_name: str) -> list[Any]:
    """Return the changes after ``position`` that may touch these customers' ``event_name`` usage."""
    c = changes_table
    owners = [c.c.customer_id.in_(list(customer_ids)),
              sa.and_(c.c.customer_id.is_(None), c.c.external_customer_id.is_(None))]
    if aliases:
        owners.append(c.c.external_customer_id.in_(list(aliases)))
    return list(conn.execute(
        sa.select(c.c.id, c.c.customer_id, c.c.external_customer_id, c.c.event_name, c.c.ts_start, c.c.ts_end)
        .where(c.c.id > position, sa.or_(*owners), sa.or_(c.c.event_name.is_(None), c.c.event_name == event_name))
    ).all())


def load_fragments(conn: Any, metric_id: str, group_by: str, customer_ids: Sequence[str], size: int,
                   buckets: Iterable[int]) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], dict[str, Partial]]]:
    """Return which of ``buckets`` are computed ({(customer, bucket): position}) and their partials."""
    b, f = buckets_table, fragments_table
    positions: dict[tuple[str, int], int] = {}
    partials: dict[tuple[str, int], dict[str, Partial]] = {}
    ids, wanted = list(customer_ids), sorted(set(buckets))
    for chunk in range(0, len(ids), 500):
        part = ids[chunk:chunk + 500]
        for row in conn.execute(sa.select(b.c.customer_id, b.c.bucket, b.c.computed_change).where(
                b.c.metric_id == metric_id, b.c.group_by == group_by, b.c.size == size,
                b.c.customer_id.in_(part), b.c.bucket.in_(wanted))).all():
            positions[(row.customer_id, int(row.bucket))] = int(row.computed_change)
        for row in conn.execute(sa.select(f).where(
                f.c.metric_id == metric_id, f.c.group_by == group_by, f.c.size == size,
                f.c.customer_id.in_(part), f.c.bucket.in_(wanted))).mappings():
            latest = None if row["latest_ts"] is None else (
                int(row["latest_ts"]), int(row["latest_seq"]), Decimal(row["latest_value"]))
            partials.setdefault((row["customer_id"], int(row["bucket"])), {})[row["group_key"]] = Partial(
                int(row["count"]), int(row["with_value"]), Decimal(row["total"]),
                None if row["maximum"] is None else Decimal(row["maximum"]), latest)
    return positions, partials


def save_fragments(engine: sa.Engine, metric_id: str, group_by: str, size: int, position: int,
                   computed: dict[tuple[str, int], dict[str, Partial]], replaced: Iterable[tuple[str, int]] = ()) -> None:
    """Store ``computed`` buckets (current as of ``position``) atomically; ``replaced`` ones had rows before."""
    if not computed:
        return
    b, f = buckets_table, fragments_table
    keys = sorted(computed)
    with write_lock(engine), engine.begin() as conn:
        if _is_postgres(conn):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SAVE_LOCK_KEY})
        by_customer: dict[str, list[int]] = {}
        for customer_id, bucket in sorted(replaced):
            by_customer.setdefault(customer_id, []).append(bucket)
        for customer_id, buckets in by_customer.items():  # a recomputed bucket may have lost groups
            conn.execute(sa.delete(f).where(
                f.c.metric_id == metric_id, f.c.group_by == group_by, f.c.size == size,
                f.c.customer_id == customer_id, f.c.bucket.in_(buckets)))
        # Upserts: another reader may have stored a missing bucket meanwhile. Whichever position wins,
        # a group row the other left behind came from a change after it, so the bucket reads as stale.
        _upsert(conn, b, [
            {"metric_id": metric_id, "group_by": group_by, "customer_id": c, "size": size, "bucket": t,
             "computed_change": position} for c, t in keys])
        rows = [
            {"metric_id": metric_id, "group_by": group_by, "customer_id": c, "size": size, "bucket": t,
             "group_key": g, "count": p.count, "with_value": p.with_value, "total": str(p.total),
             "maximum": None if p.maximum is None else str(p.maximum),
             "latest_ts": None if p.latest is None else p.latest[0],
             "latest_seq": None if p.latest is None else p.latest[1],
             "latest_value": None if p.latest is None else str(p.latest[2])}
            for c, t in keys for g, p in computed[(c, t)].items()
        ]
        if rows:
            _upsert(conn, f, rows)


def _upsert(conn: Any, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, or update the row with the same primary key."""
    insert = (postgresql.insert if _is_postgres(conn) else sqlite.insert)(table)
    keys = [c.name for c in table.primary_key.columns]
    conn.execute(insert.on_conflict_do_update(
        index_elements=keys, set_={c.name: insert.excluded[c.name] for c in table.columns if c.name not in keys}), rows)
