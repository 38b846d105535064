"""The in-memory usage source: aggregations (worked example 8), windows and idempotency."""

from decimal import Decimal as D

import pytest

from .helpers import events, source, t

EX8 = events("c1", (t(2025, 1, 2), {"pageviews": 10, "user": "u1"}), (t(2025, 1, 3), {"pageviews": 20, "user": "u1"}))


@pytest.mark.parametrize(
    ("metric", "expected"),
    [pytest.param("count", "2", id="ex8-count"), pytest.param("sum", "30", id="ex8-sum"),
     pytest.param("max", "20", id="ex8-max"), pytest.param("unique_count", "1", id="ex8-unique-count"),
     pytest.param("latest", "20", id="latest")],
)
def test_example_8_aggregations(metric, expected):
    """Example 8: two events give count 2, sum 30, max 20, unique users 1."""
    from billing_core.usage import InMemoryMetric
    prop = "user" if metric == "unique_count" else "pageviews"
    src = source(EX8, metrics={"m": InMemoryMetric("api_call", metric, None if metric == "count" else prop)})
    assert src.usage("m", "c1", t(2025, 1, 1), t(2025, 2, 1)).quantity == D(expected)


def test_half_open_window_and_skipped():
    """Usage is read over [start, end); events missing the summed property are counted as skipped."""
    evs = events("c1", (t(2025, 1, 1), {"tokens": 5}), (t(2025, 1, 2), {}), (t(2025, 2, 1), {"tokens": 7}))
    usage = source(evs).usage("tokens", "c1", t(2025, 1, 1), t(2025, 2, 1))
    assert (usage.quantity, usage.event_count, usage.skipped) == (D(5), 2, 1)


def test_duplicate_keys_ignored_and_bulk():
    """A repeated idempotency key is ignored; bulk usage returns every customer asked for."""
    evs = events("c1", (t(2025, 1, 1), {"tokens": 5}))
    src = source(evs, evs, events("c2", (t(2025, 1, 1), {"tokens": 1})))
    bulk = src.usage_bulk("tokens", ["c1", "c2", "c3"], t(2025, 1, 1), t(2025, 2, 1))
    assert {k: v.quantity for k, v in bulk.items()} == {"c1": D(5), "c2": D(1), "c3": D(0)}
