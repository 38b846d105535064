"""The sync arithmetic of docs/billing-rules.md §12, pinned by tables."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from worker.metering import ledger_key, plan_report, previous_hour, units_for


@pytest.mark.parametrize(
    ("cost", "price", "policy", "units"),
    [
        ("12.345", "0.01", "floor", 1234),
        ("12.349", "0.01", "floor", 1234),
        ("13.0001", "0.01", "floor", 1300),
        ("13.005", "0.01", "half_up", 1301),
        ("13.004", "0.01", "half_up", 1300),
        ("13.0001", "0.01", "ceil", 1301),
        ("13.00", "0.01", "ceil", 1300),
        ("0", "0.01", "ceil", 0),
        ("-5", "0.01", "floor", 0),
        ("0.0099", "0.01", "floor", 0),
        ("1", "0.001", "floor", 1000),
        ("10", "3", "floor", 3),
        ("10", "3", "half_up", 3),
        ("10.5", "3", "half_up", 4),
    ],
    ids=["ex-hour1", "ex-hour2", "ex-hour3", "ex-close-half-up", "half-up-below", "ceil", "ceil-exact", "zero",
         "negative", "below-one-unit", "millis", "floor-thirds", "half-up-thirds", "half-up-midpoint"],
)
def test_units_for(cost: str, price: str, policy: str, units: int) -> None:
    """Cost converts to whole units of the unit price per the rounding policy."""
    assert units_for(D(cost), D(price), policy) == units


def test_worked_example_of_billing_md() -> None:
    """The §3 example: 1234, nothing, 66, 1 at close, then 101 over-reported after an amendment."""
    p = D("0.01")
    reported = 0
    sent = []
    for cost in ("12.345", "12.349", "13.0001"):
        plan = plan_report(D(cost), p, reported)
        sent.append(plan.delta)
        reported += plan.delta
    assert sent == [1234, 0, 66]
    close = plan_report(D("13.005"), p, reported, final=True, close_policy="half_up")
    assert close.delta == 1 and close.units_total == 1301
    reported += close.delta
    amended = plan_report(D("12.00"), p, reported)
    assert amended.delta == 0 and amended.over_reported == 101


def test_remainder_carries_forward() -> None:
    """Sub-unit remainders are never lost: 0.6 + 0.6 cents report 0 then 1 unit."""
    first = plan_report(D("0.006"), D("0.01"), 0)
    second = plan_report(D("0.012"), D("0.01"), first.delta)
    assert (first.delta, second.delta) == (0, 1)


def test_hour_stamps_and_keys() -> None:
    """The hourly run reports under the hour that just ended; keys are deterministic."""
    now = datetime(2026, 11, 21, 10, 5, 30, tzinfo=UTC)
    assert previous_hour(now) == datetime(2026, 11, 21, 9, tzinfo=UTC)
    assert ledger_key("ctr_1", "usage_cost", now) == "ctr_1:usage_cost:2026-11-21T10"
