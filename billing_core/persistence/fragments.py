"""Rows of usage fragments and of the usage change log (Alembic branch ``billing_events``).

``usage_changes`` is the invalidation log: every write that moves usage appends, in its own
transaction, which customer (or external id), event name and time range it touched; ``NULL``
means "any". ``usage_fragment_coverage`` records which buckets are stored, as spans: per metric
(and grouping), bucket size and customer, ``[lo, hi)`` is current as of a log position. Inside a
span, ``usage_fragments`` holds one row per bucket and group value that has events — a bucket
without events costs no row. A bucket is stale when a change after its span's position overlaps it.

Positions are commit-ordered: on SQLite writers are serialized by the database; on PostgreSQL
every change-log insert holds a transaction-level advisory lock until its commit, and a reader
takes the same lock shared before it reads the newest position, so every change at or below a
position read is committed and visible to the reader's next query.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import Field, SQLModel

from billing_core.fragments import Partial, overlap, union
from billing_core.persistence.rows import one_of
from billing_core.persistence.writes import write_lock

__all__ = [
    "EVERY", "Change", "FragmentCoverageRow", "FragmentRow", "Segment", "UsageChangeRow", "changes_since",
    "delete_fragments", "load_coverage", "load_fragments", "load_levels", "log_changes", "newest_change", "save_fragments",
    "sum_fragments",
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


class FragmentCoverageRow(SQLModel, table=True):
    """Buckets ``[lo, hi)`` of one size, metric (and grouping) and customer are stored, current as of ``computed_change``."""

    __tablename__ = "usage_fragment_coverage"

    metric_id: str = Field(primary_key=True, max_length=64)
    group_by: str = Field(primary_key=True, max_length=1024)
    size: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    customer_id: str = Field(primary_key=True, max_length=64)
    lo: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    hi: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    computed_change: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))


class FragmentRow(SQLModel, table=True):
    """The partial of one group value in a stored bucket that holds events (``group_key`` ``""``: no grouping).

    The sum is ``total_units + total_nanos / 10^9`` (both integers with the sign of the sum), so
    a window's sum is two exact integer ``SUM``s on either database.
    """

    __tablename__ = "usage_fragments"

    metric_id: str = Field(primary_key=True, max_length=64)
    group_by: str = Field(primary_key=True, max_length=1024)
    size: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    bucket: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    customer_id: str = Field(primary_key=True, max_length=64)
    group_key: str = Field(primary_key=True, max_length=1024)
    count: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    with_value: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    total_units: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    total_nanos: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    maximum: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    latest_ts: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    latest_seq: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger, nullable=True))
    latest_value: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))


changes_table: sa.Table = UsageChangeRow.__table__  # type: ignore[attr-defined]
coverage_table: sa.Table = FragmentCoverageRow.__table__  # type: ignore[attr-defined]
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


def changes_since(conn: Any, position: int, customer_ids: Sequence[str] | None, aliases: Sequence[str],
                  event_name: str) -> list[Any]:
    """Return the changes after ``position`` that may touch these customers' ``event_name`` usage (None: anyone's)."""
    c = changes_table
    query = sa.select(c.c.id, c.c.customer_id, c.c.external_customer_id, c.c.event_name, c.c.ts_start,
                      c.c.ts_end).where(c.c.id > position,
                                        sa.or_(c.c.event_name.is_(None), c.c.event_name == event_name))
    if customer_ids is None:
        return list(conn.execute(query).all())
    out: list[Any] = []
    ids = list(customer_ids)
    for chunk in range(0, max(len(ids), 1), 500):
        owners = [one_of(c.c.customer_id, ids[chunk:chunk + 500])]
        if chunk == 0:
            owners.append(sa.and_(c.c.customer_id.is_(None), c.c.external_customer_id.is_(None)))
            if aliases:
                owners.append(one_of(c.c.external_customer_id, list(aliases)))
        out += conn.execute(query.where(sa.or_(*owners))).all()
    return sorted(set(out), key=lambda row: row.id)




# Stored fragments -----------------------------------------------------------------------------

Segment = tuple[int, int, int]  # [lo, hi) current as of a log position
Spans = Mapping[int, Sequence[tuple[int, int]]]  # bucket size -> [lo, hi) spans of bucket starts


def _chunks(ids: Sequence[str] | None) -> list[list[str] | None]:
    if ids is None:
        return [None]
    listed = list(ids)
    return [listed[i:i + 500] for i in range(0, len(listed), 500)]


EVERY = "*"  # the customer of spans computed for every customer at once


def load_coverage(conn: Any, metric_id: str, group_by: str, size: int, customer_ids: Sequence[str] | None,
                  lo: int, hi: int) -> dict[str, list[Segment]]:
    """Return the stored spans overlapping ``[lo, hi)`` of these customers (None: all) and of ``EVERY``, sorted."""
    t = coverage_table
    out: dict[str, list[Segment]] = {}
    for part in _chunks(customer_ids):
        query = sa.select(t.c.customer_id, t.c.lo, t.c.hi, t.c.computed_change).where(
            t.c.metric_id == metric_id, t.c.group_by == group_by, t.c.size == size, t.c.lo < hi, t.c.hi > lo)
        if part is not None:
            query = query.where(one_of(t.c.customer_id, [*part, EVERY]))
        for row in conn.execute(query.order_by(t.c.customer_id, t.c.lo)).all():
            out.setdefault(row[0], []).append((int(row[1]), int(row[2]), int(row[3])))
    return out


def load_levels(conn: Any, metric_id: str, group_by: str, customer_ids: Sequence[str] | None,
                windows: Mapping[int, tuple[int, int]]) -> dict[int, dict[str, list[Segment]]]:
    """Return, per bucket size, what ``load_coverage`` returns for that size's window, in one query per chunk."""
    t = coverage_table
    out: dict[int, dict[str, list[Segment]]] = {size: {} for size in windows}
    if not windows:
        return out
    lo = min(w[0] for w in windows.values())
    hi = max(w[1] for w in windows.values())
    for part in _chunks(customer_ids):
        query = sa.select(t.c.size, t.c.customer_id, t.c.lo, t.c.hi, t.c.computed_change).where(
            t.c.metric_id == metric_id, t.c.group_by == group_by, one_of(t.c.size, list(windows)), t.c.lo < hi,
            t.c.hi > lo)
        if part is not None:
            query = query.where(one_of(t.c.customer_id, [*part, EVERY]))
        for size, customer, a, b, position in conn.execute(query.order_by(t.c.customer_id, t.c.lo)).tuples():
            w_lo, w_hi = windows[size]
            if a < w_hi and b > w_lo:  # integers on both databases (BIGINT columns)
                by_customer = out[size]
                segments = by_customer.get(customer)
                if segments is None:
                    by_customer[customer] = [(a, b, position)]
                else:
                    segments.append((a, b, position))
    return out


def _rows_of(f: sa.Table, metric_id: str, group_by: str, spans: Spans, customers: list[str] | None,
             columns: Sequence[Any]) -> Any:
    """SELECT ``columns`` of the rows in ``spans`` (of ``customers``; None: everyone's), one branch per size.

    Rows are keyed time first (size, bucket, customer): for everyone, each branch reads a range
    of buckets; for a few customers, equality on each bucket and customer lets the database seek
    straight to their rows instead of reading everyone's in the range.
    """
    branches = []
    for size, listed in sorted(spans.items()):
        if not listed:
            continue
        where = [f.c.metric_id == metric_id, f.c.group_by == group_by, f.c.size == size]
        if customers is None:
            where.append(sa.or_(*(sa.and_(f.c.bucket >= lo, f.c.bucket < hi) for lo, hi in listed)))
        else:
            where += [one_of(f.c.bucket, [b for lo, hi in listed for b in range(lo, hi, size)]),
                      one_of(f.c.customer_id, customers)]
        branches.append(sa.select(*columns).where(*where))
    return branches[0] if len(branches) == 1 else sa.union_all(*branches)


def sum_fragments(conn: Any, metric_id: str, group_by: str, customer_ids: Sequence[str] | None, spans: Spans
                  ) -> list[tuple[str, str, int, int, int, int, int]]:
    """Add up the stored rows of ``spans`` in the database, per customer and group value.

    Returns (customer, group key, events, events with a value, sum of units, sum of nanos,
    fragments). On SQLite a 64-bit overflow of the units raises ``OperationalError``
    (``integer overflow``): the caller reads raw events instead.
    """
    f = fragments_table
    out: list[Any] = []  # tuples, or rows that unpack as they do
    for part in _chunks(customer_ids):
        rows = _rows_of(f, metric_id, group_by, spans, part, [
            f.c.customer_id, f.c.group_key, f.c["count"], f.c.with_value, f.c.total_units, f.c.total_nanos,
        ]).subquery("stored")
        query = sa.select(
            rows.c.customer_id, rows.c.group_key, sa.func.sum(rows.c["count"]), sa.func.sum(rows.c.with_value),
            sa.func.sum(rows.c.total_units), sa.func.sum(rows.c.total_nanos), sa.func.count(),
        ).group_by(rows.c.customer_id, rows.c.group_key)
        if _is_postgres(conn):  # SUM of bigints is numeric there
            out += [(c, k, int(a), int(b), int(u), int(n), int(m)) for c, k, a, b, u, n, m in conn.execute(query)]
        else:  # integers already: the rows as fetched (one fetch for all, not one per row)
            out += conn.execute(query).fetchall()
    return out


def _partial(row: Any) -> Partial:
    latest = None if row["latest_ts"] is None else (
        int(row["latest_ts"]), int(row["latest_seq"]), Decimal(row["latest_value"]))
    total = Decimal(int(row["total_units"]) * _NANOS + int(row["total_nanos"])).scaleb(-9)
    return Partial(int(row["count"]), int(row["with_value"]), total,
                   None if row["maximum"] is None else Decimal(row["maximum"]), latest)


def load_fragments(conn: Any, metric_id: str, group_by: str, customer_ids: Sequence[str] | None, spans: Spans
                   ) -> dict[tuple[str, int, int], dict[str, Partial]]:
    """Return the stored partials of ``spans``: {(customer, size, bucket): {group key: partial}}."""
    f = fragments_table
    out: dict[tuple[str, int, int], dict[str, Partial]] = {}
    for part in _chunks(customer_ids):
        for row in conn.execute(_rows_of(f, metric_id, group_by, spans, part, list(f.columns))).mappings():
            out.setdefault((row["customer_id"], int(row["size"]), int(row["bucket"])), {})[row["group_key"]] = \
                _partial(row)
    return out


_NANOS = 10**9


def _split(total: Decimal) -> tuple[int, int]:
    """Return (units, nanos) of a total with at most 9 decimal places (ValueError otherwise)."""
    scaled = total.scaleb(9)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"a fragment total has more than 9 decimal places: {total}")
    whole = int(scaled)
    units = int(total)  # toward zero: both parts carry the total's sign
    return units, whole - units * _NANOS


def save_fragments(engine: sa.Engine, metric_id: str, group_by: str, size: int, position: int, *,
                   window: tuple[int, int], expected: Mapping[str, list[Segment]], compared: Sequence[str] | None,
                   covered: Mapping[str, list[tuple[int, int]]], recomputed: Mapping[str, list[tuple[int, int]]],
                   computed: Mapping[tuple[str, int], Mapping[str, Partial]]) -> set[str]:
    """Store what one read computed, as of ``position``; return the customers left alone.

    Compare-and-set: ``expected`` is the spans overlapping ``window`` of the ``compared`` customers
    (None: all) and of ``EVERY``, as the read loaded them. A customer whose spans (or ``EVERY``'s)
    another reader changed meanwhile is left alone; when ``covered`` holds ``EVERY``, any change
    leaves everything alone (``{EVERY}``). Otherwise each customer's rows in ``recomputed`` (for
    ``EVERY``: every customer's) are replaced by ``computed``, its spans become ``covered``
    (merged), current as of ``position``, and customers' own spans that ``EVERY``'s now hold are
    dropped (they say nothing more).
    """
    customers = sorted(covered)
    if not customers:
        return set()
    c, f = coverage_table, fragments_table
    with write_lock(engine), engine.begin() as conn:
        if _is_postgres(conn):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SAVE_LOCK_KEY})
        now = load_coverage(conn, metric_id, group_by, size, compared, *window)
        if now.get(EVERY, []) != list(expected.get(EVERY, [])):
            return {EVERY} if EVERY in covered else set(customers)
        if EVERY in covered and now != {k: list(v) for k, v in expected.items() if v}:
            return {EVERY}
        left = {cid for cid in customers if now.get(cid, []) != list(expected.get(cid, []))}
        keep = [cid for cid in customers if cid not in left]
        level = {"m": metric_id, "g": group_by, "s": size}
        same_level = [f.c.metric_id == sa.bindparam("m"), f.c.group_by == sa.bindparam("g"),
                      f.c.size == sa.bindparam("s")]
        for lo, hi in recomputed.get(EVERY, []) if EVERY in keep else []:
            conn.execute(sa.delete(f).where(*same_level, f.c.bucket >= sa.bindparam("lo"),
                                            f.c.bucket < sa.bindparam("hi")), {**level, "lo": lo, "hi": hi})
        # Only buckets that were held can have rows (an uncovered bucket never does); each bucket
        # by equality, so the delete seeks to the customer's rows instead of reading everyone's.
        gone = [{**level, "c": cid, "b": bucket} for cid in keep if cid != EVERY
                for lo, hi in overlap(recomputed.get(cid, ()), _held(expected, cid))
                for bucket in range(lo, hi, size)]
        if gone:
            conn.execute(sa.delete(f).where(*same_level, f.c.bucket == sa.bindparam("b"),
                                            f.c.customer_id == sa.bindparam("c")), gone)
        rows = []
        for (cid, bucket), parts in computed.items():
            if cid in left:
                continue
            for key, p in parts.items():
                units, nanos = _split(p.total)
                rows.append({
                    "metric_id": metric_id, "group_by": group_by, "customer_id": cid, "size": size, "bucket": bucket,
                    "group_key": key, "count": p.count, "with_value": p.with_value, "total_units": units,
                    "total_nanos": nanos, "maximum": None if p.maximum is None else str(p.maximum),
                    "latest_ts": None if p.latest is None else p.latest[0],
                    "latest_seq": None if p.latest is None else p.latest[1],
                    "latest_value": None if p.latest is None else str(p.latest[2])})
        if rows:
            conn.execute(sa.insert(f), rows)
        old = [{**level, "c": cid, "lo": lo} for cid in keep for lo, _, _ in expected.get(cid, ())]
        if old:
            conn.execute(sa.delete(c).where(
                c.c.metric_id == sa.bindparam("m"), c.c.group_by == sa.bindparam("g"), c.c.size == sa.bindparam("s"),
                c.c.customer_id == sa.bindparam("c"), c.c.lo == sa.bindparam("lo")), old)
        spans = [{"metric_id": metric_id, "group_by": group_by, "size": size, "customer_id": cid, "lo": lo, "hi": hi,
                  "computed_change": position} for cid in keep for lo, hi in union(covered[cid])]
        if spans:
            conn.execute(sa.insert(c), spans)
        if EVERY in keep:
            for lo, hi in union(covered[EVERY]):
                conn.execute(sa.delete(c).where(
                    c.c.metric_id == metric_id, c.c.group_by == group_by, c.c.size == size, c.c.customer_id != EVERY,
                    c.c.lo >= lo, c.c.hi <= hi))
    return left


def _held(expected: Mapping[str, list[Segment]], customer_id: str) -> list[tuple[int, int]]:
    return [(lo, hi) for lo, hi, _ in [*expected.get(EVERY, []), *expected.get(customer_id, [])]]


def delete_fragments(engine: sa.Engine, *, before: int | None = None, size: int | None = None) -> tuple[int, int]:
    """Drop stored fragments (all, or of ``size`` buckets wholly before ``before``); return (spans, rows) dropped.

    Safe at any moment: a dropped bucket is missing, and the next read that needs it recomputes it.
    Each level is cut at the start of its own bucket holding ``before``, so a span that straddles
    the cut stays whole buckets.
    """
    c, f = coverage_table, fragments_table
    spans = rows = 0
    with write_lock(engine), engine.begin() as conn:
        if _is_postgres(conn):
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SAVE_LOCK_KEY})
        if before is None:
            span_where: list[Any] = [] if size is None else [c.c.size == size]
            row_where: list[Any] = [] if size is None else [f.c.size == size]
            spans = conn.execute(sa.delete(c).where(*span_where)).rowcount
            rows = conn.execute(sa.delete(f).where(*row_where)).rowcount
            return spans, rows
        sizes = [size] if size is not None else [
            int(s) for s in conn.execute(sa.select(c.c.size).distinct()).scalars()]
        for level in sizes:
            cut = before - before % level
            moved = conn.execute(sa.update(c).where(c.c.size == level, c.c.lo < cut, c.c.hi > cut).values(lo=cut))
            spans += conn.execute(sa.delete(c).where(c.c.size == level, c.c.hi <= cut)).rowcount + moved.rowcount
            rows += conn.execute(sa.delete(f).where(f.c.size == level, f.c.bucket + level <= cut)).rowcount
    return spans, rows
