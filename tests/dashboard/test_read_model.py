"""The dashboard's read model: pure helpers as tables."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from worker import ops

T = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(("now", "minute", "expected"), [
    pytest.param(T.replace(minute=2), 5, T.replace(minute=5), id="before-the-minute"),
    pytest.param(T.replace(minute=5), 5, T.replace(hour=11, minute=5), id="at-the-minute"),
    pytest.param(T.replace(minute=59, second=59), 0, T.replace(hour=11), id="minute-zero"),
])
def test_next_hourly_run(now: datetime, minute: int, expected: datetime) -> None:
    """The next run is the next instant at HOURLY_SYNC_MINUTE, never the current one."""
    assert ops.next_hourly_run(now, minute) == expected


@pytest.mark.parametrize(("value", "top"), [(0, 2), (1.5, 2), (3, 5), (7, 10), (11, 20), (49.9, 50), (1734, 2000)])
def test_chart_axis_top(value: float, top: int) -> None:
    """The chart's axis ends at the next of 2, 5, 10, 20, 50, ..."""
    assert ops._nice_ceiling(value) == top


def test_chart_counts_only_units_that_reached_the_marketplace() -> None:
    """Failed reports draw a bar but add nothing to the reported total; cost is shown in units."""
    ledger = [
        {"hour": "2026-11-21T09:00:00+00:00", "quantity": 10, "cost_to_date": "0.10", "status": "accepted"},
        {"hour": "2026-11-21T10:00:00+00:00", "quantity": 5, "cost_to_date": "0.15", "status": "failed"},
        {"hour": "2026-11-21T11:00:00+00:00", "quantity": 7, "cost_to_date": "0.17", "status": "accepted"},
    ]
    points = ops.chart(ledger, Decimal("0.01"))["points"]
    assert [p["cumulative"] for p in points] == [10, 10, 17]
    assert [p["computed"] for p in points] == [10.0, 15.0, 17.0]
    assert ops.chart([], Decimal("0.01"))["points"] == []


def test_chart_of_a_contract_with_consumption_draws_the_units_above_what_it_includes() -> None:
    """The computed line is the cost in units less what the contract included when each report was written."""
    from datetime import UTC, datetime

    ledger = [
        {"hour": "2026-11-21T09:00:00+00:00", "quantity": 0, "cost_to_date": "0.70", "status": "accepted",
         "created_at": datetime(2026, 11, 21, 10, 5, tzinfo=UTC)},
        {"hour": "2026-11-21T10:00:00+00:00", "quantity": 50, "cost_to_date": "1.05", "status": "accepted",
         "created_at": datetime(2026, 11, 21, 11, 5, tzinfo=UTC)},
    ]
    points = ops.chart(ledger, Decimal("0.001"), included=lambda at: 1000)["points"]
    assert [p["computed"] for p in points] == [0.0, 50.0]
