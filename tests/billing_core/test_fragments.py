"""Fragments merge exactly: any window cut into raw edges and buckets (minutes to days) adds up to the same answer
as aggregating its events directly, for every mergeable aggregation, with and without groups; and
the bucket partials the database computes merge into what evaluating the window gives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import Engine, text

from billing_core.events import from_micros, to_micros
from billing_core.fragments import (
    DAY, EMPTY, FINEST, HOUR, LEVEL_NAMES, LEVELS, MERGEABLE, Partial, cover, merge_groups,
)
from billing_core.metric_definition import MetricDefinition
from billing_core.sql_usage import SqlUsageSource
from tests.billing_core.test_sql_usage import add_customer, ingest

START = 1_795_000_000_000_000 - 1_795_000_000_000_000 % DAY  # a UTC midnight in 2026, in microseconds
SPAN = 30 * DAY  # long enough for 8-day blocks

instants = st.integers(min_value=START, max_value=START + SPAN)
values = st.one_of(
    st.none(),
    st.decimals(min_value=Decimal("-999999999999.999"), max_value=Decimal("999999999999.999"), places=3,
                allow_nan=False, allow_infinity=False),
)
events = st.lists(st.tuples(instants, values, st.sampled_from(["a", "b", ""])), max_size=60)


def _direct(rows: list[tuple[int, int, Decimal | None, str]], start: int, end: int) -> dict[str, Partial]:
    """Aggregate the events of [start, end) one by one (the reference), per group."""
    out: dict[str, list[tuple[int, int, Decimal | None]]] = {}
    for ts, seq, value, group in rows:
        if start <= ts < end:
            out.setdefault(group, []).append((ts, seq, value))
    result = {}
    for group, found in out.items():
        with_values = [(ts, seq, v) for ts, seq, v in found if v is not None]
        result[group] = Partial(
            count=len(found), with_value=len(with_values), total=sum((v for _, _, v in with_values), Decimal(0)),
            maximum=max((v for _, _, v in with_values), default=None),
            latest=max(with_values, key=lambda x: (x[0], x[1]), default=None),
        )
    return result


@settings(max_examples=300, deadline=None)
@given(start=instants, length=st.integers(min_value=0, max_value=SPAN))
def test_cover_cuts_a_window_into_aligned_pieces_without_gap_or_overlap(start: int, length: int) -> None:
    end = start + length
    pieces = cover(start, end)
    assert (pieces[0].start, pieces[-1].end) == (start, end) if pieces else length == 0
    for before, after in zip(pieces, pieces[1:]):
        assert before.end == after.start
    for piece in pieces:
        assert piece.start < piece.end
        if piece.kind == "raw":
            assert piece.end - piece.start < FINEST or len(pieces) == 1
        else:
            assert piece.size in LEVELS and LEVEL_NAMES[piece.size] == piece.kind
            assert piece.start % piece.size == 0
    raw = [p for p in pieces if p.kind == "raw"]
    assert len(raw) <= 2
    # Sizes rise then fall; on each side of the largest, at most two 5-minute buckets, two hours and
    # one of each other size.
    sizes = [p.size for p in pieces if p.kind != "raw"]
    top = sizes.index(max(sizes)) if sizes else 0
    assert sizes[:top + 1] == sorted(sizes[:top + 1]) and sizes[top:] == sorted(sizes[top:], reverse=True)
    for level in LEVELS[:-1]:
        assert sizes.count(level) <= (4 if level in (FINEST, HOUR) else 2) + (level == max(sizes, default=0))
    # No run of smaller buckets could have been one larger bucket.
    for piece in pieces:
        for bigger in LEVELS:
            if bigger > piece.size and piece.kind != "raw" and piece.start % bigger == 0:
                assert piece.start + bigger > end


@settings(max_examples=300, deadline=None)
@given(rows=events, start=instants, length=st.integers(min_value=0, max_value=SPAN))
def test_a_window_from_pieces_equals_the_window_read_directly(rows, start, length) -> None:  # type: ignore[no-untyped-def]
    numbered = [(ts, seq, value, group) for seq, (ts, value, group) in enumerate(rows)]
    end = start + length
    direct = _direct(numbered, start, end)
    merged = merge_groups(*(_direct(numbered, p.start, p.end) for p in cover(start, end)))
    assert merged == direct
    for aggregation in MERGEABLE:
        assert {g: p.quantity(aggregation) for g, p in merged.items()} == \
               {g: p.quantity(aggregation) for g, p in direct.items()}


@given(parts=st.lists(st.tuples(instants, values), max_size=12))
def test_merge_is_associative_and_commutative_with_empty_as_identity(parts) -> None:  # type: ignore[no-untyped-def]
    """Events have distinct ingest sequences, so ``latest`` never ties."""
    partials = [Partial.of(ts, seq, value) for seq, (ts, value) in enumerate(parts)]
    forward, backward = Partial.combine(partials), Partial.combine(reversed(partials))
    assert forward == backward == EMPTY.merge(forward) == forward.merge(EMPTY)
    if len(partials) >= 3:
        a, b, c = partials[0], partials[1], Partial.combine(partials[2:])
        assert a.merge(b).merge(c) == a.merge(b.merge(c))


def test_unique_count_is_not_merged() -> None:
    assert "unique_count" not in MERGEABLE
    try:
        Partial.of(0, 1, Decimal(1)).quantity("unique_count")
    except ValueError as exc:
        assert "read it raw" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("unique_count merged")


# --- fragments computed by the database ------------------------------------------------------------

DB_START = datetime(2026, 11, 9, tzinfo=timezone.utc)
_db_events = st.lists(
    st.tuples(
        st.integers(0, 3 * 24 * 3600 - 1),                       # seconds after DB_START
        st.sampled_from(["acme", "globex"]),                      # the customer's external id
        st.one_of(st.none(), st.decimals(min_value=-10**6, max_value=10**6, places=2, allow_nan=False,
                                         allow_infinity=False)),
        st.sampled_from(["x", "y"]),
    ),
    max_size=25,
)


@pytest.mark.parametrize("aggregation", sorted(MERGEABLE))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_db_events, window=st.tuples(st.integers(0, 3 * 24 * 3600), st.integers(0, 3 * 24 * 3600)))
def test_bucket_partials_from_the_database_merge_into_the_window(any_engine: Engine, aggregation: str,
                                                                  rows: list, window: tuple[int, int]) -> None:
    """Hour (and day) partials computed by SQL merge into exactly what evaluating the window gives,
    per customer and per group, on SQLite and PostgreSQL."""
    with any_engine.begin() as conn:
        conn.execute(text("DELETE FROM events"))
        conn.execute(text("DELETE FROM customers"))
    add_customer(any_engine, "c1", "acme")
    add_customer(any_engine, "c2", "globex")
    batch = []
    for i, (second, customer, value, group) in enumerate(rows):
        props = {"g": group} if value is None else {"g": group, "n": value}
        at = (DB_START + timedelta(seconds=second)).isoformat().replace("+00:00", "Z")
        batch.append({"idempotency_key": f"k{i}", "event_name": "call", "external_customer_id": customer,
                      "timestamp": at, "properties": props})
    if batch:
        ingest(any_engine, batch)
    start, end = (DB_START + timedelta(seconds=s) for s in sorted(window))
    definition = MetricDefinition("call", aggregation, None if aggregation == "count" else "n")  # type: ignore[arg-type]
    source = SqlUsageSource(any_engine)
    direct = source.evaluate(definition, ["c1", "c2"], start, end, ("g",))
    hours = source.partials(definition, ["c1", "c2"], start, end)
    grouped = source.partials(definition, ["c1", "c2"], start, end, group_by=("g",))
    for customer in ("c1", "c2"):
        merged = Partial.combine(hours.get((customer,), {}).values())
        usage = direct[customer]
        assert merged.quantity(aggregation) == usage.quantity
        assert merged.count == usage.event_count
        assert (0 if aggregation == "count" else merged.skipped) == usage.skipped
        groups = {key[1:]: Partial.combine(parts.values()).quantity(aggregation)
                  for key, parts in grouped.items() if key[0] == customer}
        assert groups == dict(usage.groups or {})
        for bucket in hours.get((customer,), {}):
            assert bucket % HOUR == 0 and to_micros(start) - HOUR < bucket < to_micros(end)
    aligned_start, aligned_end = DB_START, DB_START + timedelta(days=3)
    days = source.partials(definition, ["c1"], aligned_start, aligned_end, bucket=DAY).get(("c1",), {})
    by_hour = source.partials(definition, ["c1"], aligned_start, aligned_end).get(("c1",), {})
    for day, part in days.items():
        assert part == Partial.combine(p for t, p in by_hour.items() if day <= t < day + DAY), from_micros(day)
    assert set(days) == {t - t % DAY for t in by_hour}
