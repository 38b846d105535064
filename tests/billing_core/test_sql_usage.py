"""The SQL usage source: every aggregation and filter, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import Engine, text

from billing_core.customers import create_customer
from billing_core.events import amend_event, deprecate_event, ingest_events
from billing_core.metric_sql import metric_from_sql
from billing_core.metric_definition import Condition, MetricDefinition
from billing_core.metrics import create_metric
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import SqlEventStore
from billing_core.persistence.metrics import SqlMetricRepository
from billing_core.sql_usage import SqlUsageSource
from billing_core.usage import UsageSource
from worker.db import session_scope


D = Decimal
NOW = datetime(2026, 12, 15, 12, 0, tzinfo=timezone.utc)
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
END = datetime(2026, 12, 1, tzinfo=timezone.utc)


def ev(key: str, props: dict[str, Any], *, name: str = "page_view", customer: str = "acme",
       at: str = "2026-11-10T00:00:00Z") -> dict[str, Any]:
    """Return a raw event for external customer ``customer``."""
    return {"idempotency_key": key, "event_name": name, "external_customer_id": customer,
            "timestamp": at, "properties": props}


def add_customer(engine: Engine, customer_id: str = "c1", external: str | None = "acme") -> None:
    """Create a customer in its own transaction."""
    with session_scope(engine) as session:
        create_customer(SqlCustomerRepository(session), customer_id=customer_id, name=customer_id,
                        email=f"{customer_id}@x.test", external_customer_id=external, now=NOW)


def ingest(engine: Engine, events: list[dict[str, Any]]) -> None:
    """Ingest a batch in its own transaction."""
    with session_scope(engine) as session:
        ingest_events(SqlEventStore(session), events, now=NOW)


def usage(engine: Engine, definition: MetricDefinition, customer: str = "c1", group_by: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    """Evaluate ``definition`` for one customer over November."""
    return SqlUsageSource(engine).evaluate(definition, [customer], START, END, group_by)[customer]


EXAMPLE_8 = [ev("e1", {"pageviews": 10, "user": "u1"}), ev("e2", {"pageviews": 20, "user": "u1"})]


@pytest.mark.parametrize(
    "aggregation, prop, expected",
    [
        pytest.param("count", None, D(2), id="count-2"),
        pytest.param("sum", "pageviews", D(30), id="sum-30"),
        pytest.param("max", "pageviews", D(20), id="max-20"),
        pytest.param("unique_count", "user", D(1), id="unique-count-user-1"),
        pytest.param("latest", "pageviews", D(20), id="latest-20"),
    ],
)
def test_billing_md_example_8(any_engine: Engine, aggregation: str, prop: str | None, expected: Decimal) -> None:
    """billing.md example 8: two page views of u1 give count 2, sum 30, max 20, unique users 1."""
    add_customer(any_engine)
    ingest(any_engine, EXAMPLE_8)
    result = usage(any_engine, MetricDefinition("page_view", aggregation, prop))  # type: ignore[arg-type]
    assert (result.quantity, result.event_count) == (expected, 2)


MIXED = [
    ev("a", {"n": 5, "s": "x", "b": True, "r": "eu"}, at="2026-11-02T00:00:00Z"),
    ev("b", {"n": D("2.5"), "s": "y", "b": False, "r": "us"}, at="2026-11-03T00:00:00Z"),
    ev("c", {"n": 4, "s": "4", "r": "eu"}, at="2026-11-04T00:00:00Z"),
    ev("d", {"s": "x", "r": "us"}, at="2026-11-05T00:00:00Z"),
    ev("e", {"n": "7", "s": "z"}, at="2026-11-06T00:00:00Z"),
    ev("f", {"n": 100}, name="other", at="2026-11-07T00:00:00Z"),
    ev("g", {"n": 1000}, at="2026-10-31T23:59:59.999999Z"),
    ev("h", {"n": 1000}, at="2026-12-01T00:00:00Z"),
    ev("i", {"n": 1000}, customer="globex", at="2026-11-08T00:00:00Z"),
]

AGGREGATIONS = [
    pytest.param("count", None, (), D(5), 0, id="count-ignores-other-names-customers-and-window-edges"),
    pytest.param("sum", "n", (), D("11.5"), 2, id="sum-skips-missing-and-string-numbers"),
    pytest.param("max", "n", (), D(5), 2, id="max-numbers-only"),
    pytest.param("latest", "n", (), D(4), 2, id="latest-numeric-value"),
    pytest.param("unique_count", "s", (), D(4), 0, id="unique-count-is-typed"),
    pytest.param("sum", "n", (Condition("s", "=", "x"),), D(5), 1, id="filter-equals-string"),
    pytest.param("count", None, (Condition("s", "=", D(4)),), D(0), 0, id="string-4-is-not-number-4"),
    pytest.param("count", None, (Condition("s", "=", "4"),), D(1), 0, id="string-4-equals-string-4"),
    pytest.param("count", None, (Condition("s", "!=", "x"),), D(3), 0, id="not-equals"),
    pytest.param("count", None, (Condition("r", "!=", "eu"),), D(2), 0, id="not-equals-skips-missing"),
    pytest.param("count", None, (Condition("s", "in", ("x", "z")),), D(3), 0, id="in"),
    pytest.param("count", None, (Condition("s", "not in", ("x", "z")),), D(2), 0, id="not-in"),
    pytest.param("count", None, (Condition("n", "<", D(4)),), D(1), 0, id="less-than"),
    pytest.param("count", None, (Condition("n", "<=", D(4)),), D(2), 0, id="less-or-equal"),
    pytest.param("count", None, (Condition("n", ">", D("2.5")),), D(2), 0, id="greater-than-decimal"),
    pytest.param("count", None, (Condition("n", ">=", D("2.5")),), D(3), 0, id="greater-or-equal"),
    pytest.param("count", None, (Condition("b", "=", True),), D(1), 0, id="boolean-true"),
    pytest.param("count", None, (Condition("b", "=", False),), D(1), 0, id="boolean-false"),
    pytest.param("count", None, (Condition("n", "=", D("2.50")),), D(1), 0, id="number-equality-numeric"),
]


@pytest.mark.parametrize("aggregation, prop, filters, expected, skipped", AGGREGATIONS)
def test_aggregations_and_filters(any_engine: Engine, aggregation: str, prop: str | None, filters: tuple,
                                  expected: Decimal, skipped: int) -> None:
    """Each aggregation and filter operator gives the same typed answer on both databases."""
    add_customer(any_engine)
    add_customer(any_engine, "c2", "globex")
    ingest(any_engine, MIXED)
    result = usage(any_engine, MetricDefinition("page_view", aggregation, prop, filters))  # type: ignore[arg-type]
    assert (result.quantity, result.skipped) == (expected, skipped)


@pytest.mark.parametrize(
    "sql, expected",
    [
        pytest.param("SELECT SUM(n) FROM events WHERE event_name = 'page_view' AND (s = 'x' OR s = 'y')",
                     D("7.5"), id="or"),
        pytest.param("SELECT COUNT(*) FROM events WHERE event_name = 'page_view' AND r = 'eu' AND n >= 5",
                     D(1), id="and"),
        pytest.param("SELECT COUNT(DISTINCT r) FROM events WHERE event_name = 'page_view'", D(2), id="distinct"),
    ],
)
def test_sql_metrics_evaluate_in_the_database(any_engine: Engine, sql: str, expected: Decimal) -> None:
    """A metric given as SQL evaluates to the same quantity as its structured form."""
    add_customer(any_engine)
    ingest(any_engine, MIXED)
    assert usage(any_engine, metric_from_sql(sql)).quantity == expected


@pytest.mark.parametrize(
    "aggregation, prop, expected",
    [
        pytest.param("count", None, {("eu", "x"): D(1), ("eu", ""): D(1), ("us", "y"): D(1), ("us", "x"): D(1),
                                     ("", "z"): D(1)}, id="count-by-two"),
        pytest.param("sum", "n", {("eu", "x"): D(5), ("eu", ""): D(4), ("us", "y"): D("2.5"), ("us", "x"): D(0),
                                  ("", "z"): D(0)}, id="sum-by-two"),
    ],
)
def test_group_by_two_properties(any_engine: Engine, aggregation: str, prop: str | None, expected: dict) -> None:
    """Grouping by two properties returns one quantity per value pair; a missing value groups as ''."""
    add_customer(any_engine)
    ingest(any_engine, [ev(k, {**p, "s": p["s"]} if k != "c" else {"n": 4, "r": "eu"}) for k, p in
                        [("a", {"n": 5, "s": "x", "r": "eu"}), ("b", {"n": D("2.5"), "s": "y", "r": "us"}),
                         ("c", {}), ("d", {"s": "x", "r": "us"}), ("e", {"n": "7", "s": "z"})]])
    result = usage(any_engine, MetricDefinition("page_view", aggregation, prop), group_by=("r", "s"))  # type: ignore[arg-type]
    assert dict(result.groups or {}) == expected
    assert result.quantity == sum(expected.values())


@pytest.mark.parametrize(
    "aggregation, total, groups",
    [
        pytest.param("unique_count", D(2), {("eu",): D(1), ("us",): D(2)}, id="unique-count-total-is-not-sum"),
        pytest.param("latest", D(3), {("eu",): D(2), ("us",): D(3)}, id="latest-per-group"),
        pytest.param("max", D(3), {("eu",): D(2), ("us",): D(3)}, id="max-per-group"),
    ],
)
def test_grouped_totals_are_computed_over_all_events(any_engine: Engine, aggregation: str, total: Decimal,
                                                       groups: dict) -> None:
    """Totals of non-additive aggregations are computed over all events, not summed over groups."""
    add_customer(any_engine)
    ingest(any_engine, [
        ev("a", {"u": "u1", "v": 1, "r": "us"}, at="2026-11-02T00:00:00Z"),
        ev("b", {"u": "u1", "v": 2, "r": "eu"}, at="2026-11-03T00:00:00Z"),
        ev("c", {"u": "u2", "v": 3, "r": "us"}, at="2026-11-04T00:00:00Z"),
    ])
    prop = "u" if aggregation == "unique_count" else "v"
    result = usage(any_engine, MetricDefinition("page_view", aggregation, prop, group_by=("r",)))  # type: ignore[arg-type]
    assert (result.quantity, dict(result.groups or {})) == (total, groups)


def test_events_sent_before_the_customer_exists_are_attached(any_engine: Engine) -> None:
    """Events for an unknown external id count for the customer once it is created, next to later ones."""
    ingest(any_engine, [ev("early", {"n": 1})])
    add_customer(any_engine)
    ingest(any_engine, [ev("late", {"n": 2})])
    result = usage(any_engine, MetricDefinition("page_view", "sum", "n"))
    assert (result.quantity, result.event_count) == (D(3), 2)


def test_events_by_customer_id_and_alias_are_one_customer(any_engine: Engine) -> None:
    """Events naming the customer by id and by external id aggregate together (distinct counted once)."""
    add_customer(any_engine)
    ingest(any_engine, [ev("a", {"u": "u1"}), {**ev("b", {"u": "u1"}), "external_customer_id": None,
                                                  "customer_id": "c1"}])
    ingest(any_engine, [{k: v for k, v in ev("c", {"u": "u2"}).items()}])
    assert usage(any_engine, MetricDefinition("page_view", "unique_count", "u")).quantity == D(2)


def test_corrections_are_read_path_overlays(any_engine: Engine) -> None:
    """An amended event counts with its new body, a deprecated one not at all."""
    add_customer(any_engine)
    ingest(any_engine, [ev("a", {"n": 1}), ev("b", {"n": 10}), ev("c", {"n": 100})])
    with session_scope(any_engine) as session:
        store = SqlEventStore(session)
        amend_event(store, "a", {k: v for k, v in ev("a", {"n": 5}).items() if k != "idempotency_key"}, now=NOW)
        deprecate_event(store, "c")
    result = usage(any_engine, MetricDefinition("page_view", "sum", "n"))
    assert (result.quantity, result.event_count) == (D(15), 2)


@pytest.mark.parametrize(
    "values, expected",
    [
        pytest.param(["0.1", "0.2"], D("0.3"), id="no-float-drift"),
        pytest.param(["0.000000001"] * 3, D("0.000000003"), id="nine-decimal-places"),
        pytest.param(["123456.123456789", "1"], D("123457.123456789"), id="fifteen-significant-digits"),
        pytest.param(["999999999999999", "1"], D("1000000000000000"), id="integers-to-the-limit"),
        pytest.param(["99999999999999.9", "0.1"], D("100000000000000.0"), id="one-decimal-at-fourteen-digits"),
        pytest.param(["1234567890123.45"] * 2, D("2469135780246.90"), id="two-decimals-at-thirteen-digits"),
        pytest.param(["-1.5", "1.5"], D(0), id="negatives"),
    ],
)
def test_sums_are_exact(any_engine: Engine, values: list[str], expected: Decimal) -> None:
    """Sums of decimals are exact within the documented precision (no float drift)."""
    add_customer(any_engine)
    ingest(any_engine, [ev(f"k{i}", {"n": D(v)}) for i, v in enumerate(values)])
    assert usage(any_engine, MetricDefinition("page_view", "sum", "n")).quantity == expected


def test_usage_bulk_gives_every_customer_an_entry(any_engine: Engine) -> None:
    """usage_bulk answers for every asked customer in one call, zero for those without events."""
    add_customer(any_engine, "c1", "acme")
    add_customer(any_engine, "c2", "globex")
    add_customer(any_engine, "c3", None)
    ingest(any_engine, [ev("a", {"n": 2}), ev("b", {"n": 3}, customer="globex"), ev("c", {"n": 4}, customer="acme")])
    with session_scope(any_engine) as session:
        metric = create_metric(SqlMetricRepository(session), metric_id="m1", name="n", now=NOW,
                               sql="SELECT SUM(n) FROM events WHERE event_name = 'page_view'")
    source: UsageSource = SqlUsageSource(any_engine)
    result = source.usage_bulk(metric.id, ["c1", "c2", "c3"], START, END)
    assert {k: v.quantity for k, v in result.items()} == {"c1": D(6), "c2": D(3), "c3": D(0)}
    assert source.usage(metric.id, "c2", START, END).quantity == D(3)


def test_metric_sql_never_reaches_the_database(any_engine: Engine) -> None:
    """A metric whose event name carries SQL text just matches nothing; the events table is intact."""
    add_customer(any_engine)
    ingest(any_engine, EXAMPLE_8)
    definition = metric_from_sql("SELECT COUNT(*) FROM events WHERE event_name = 'x''; DROP TABLE events; --'")
    assert usage(any_engine, definition).quantity == 0
    with any_engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM events")).scalar_one() == 2


_events = st.lists(
    st.tuples(st.integers(0, 7), st.sampled_from(["u1", "u2", "u3"]), st.integers(-5, 50),
              st.sampled_from(["0", "0.25", "1.5"])),
    min_size=1, max_size=12,
)


@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_events, data=st.data())
def test_ingest_order_and_duplicates_never_change_results(engine: Engine, rows: list, data: st.DataObject) -> None:
    """Ingesting the same events in any order, in any batches, with repeats, gives the same usage."""
    events = [ev(f"k{i}", {"u": u, "n": n, "d": D(d)}, at=f"2026-11-1{day}T00:00:00Z")
              for i, (day, u, n, d) in enumerate(rows)]
    shuffled = data.draw(st.permutations(events))
    repeats = data.draw(st.lists(st.sampled_from(events), max_size=5))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM events"))
        conn.execute(text("DELETE FROM customers"))
    add_customer(engine)
    stream = list(shuffled) + repeats
    cut = data.draw(st.integers(0, len(stream)))
    for batch in (stream[:cut], stream[cut:]):
        if batch:
            ingest(engine, batch)
    source = SqlUsageSource(engine)
    got = {
        agg: source.evaluate(MetricDefinition("page_view", agg, prop), ["c1"], START, END)["c1"].quantity  # type: ignore[arg-type]
        for agg, prop in [("count", None), ("sum", "n"), ("sum", "d"), ("max", "n"), ("unique_count", "u")]
    }
    expected = {
        "count": D(len(events)),
        "sum": sum((D(d) for *_, d in rows), D(0)),
        "max": D(max(n for _, _, n, _ in rows)),
        "unique_count": D(len({u for _, u, _, _ in rows})),
    }
    assert got["count"] == expected["count"]
    assert got["sum"] == expected["sum"]
    assert got["max"] == expected["max"]
    assert got["unique_count"] == expected["unique_count"]
