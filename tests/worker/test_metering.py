"""The sync arithmetic of docs/billing-rules.md §12, pinned by tables."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from billing_core import PriceCost
from worker.metering import (
    Dimension, UnmappedPrice, cost_by_dimension, dimensions_of, ledger_key, plan_report, previous_hour, units_for,
)


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


# --- several dimensions ----------------------------------------------------------------------------

def _cost(key: str, item: str, total: str, *, fixed: bool = False) -> PriceCost:
    from tests.billing_core.helpers import unit

    price = unit("1", id=key, key=key, item_id=item, metric=None if fixed else "m1",
                 **({"fixed_price_quantity": D(1)} if fixed else {}))
    return PriceCost(price=price, quantity=D(1), subtotal_unrounded=D(total), total_unrounded=D(total),
                     subtotal=D(total), total=D(total), price_interval_ids=(), plan_version=1)


COSTS = (_cost("calls", "item_calls", "0.0021"), _cost("tokens", "item_tokens", "1.245"),
         _cost("storage", "item_storage", "0.3"), _cost("fee", "item_fee", "10", fixed=True))
CALLS = Dimension("api_calls", D("0.001"), ("calls",))
REST = Dimension("usage_fee", D("0.01"))


@pytest.mark.parametrize(
    ("dimensions", "fees", "expected"),
    [
        ((REST,), False, {"usage_fee": "1.5471"}),
        ((REST,), True, {"usage_fee": "11.5471"}),
        ((CALLS, REST), False, {"api_calls": "0.0021", "usage_fee": "1.545"}),
        ((Dimension("api_calls", D("0.001"), ("item_calls", "storage")), REST), False,
         {"api_calls": "0.3021", "usage_fee": "1.245"}),
        ((CALLS, Dimension("fees", D("1"), ("fee",)), REST), False,
         {"api_calls": "0.0021", "fees": "10", "usage_fee": "1.545"}),
        ((Dimension("a", D("1"), ("calls", "tokens", "storage")),), False, {"a": "1.5471"}),
    ],
    ids=["one-dimension", "one-dimension-with-fees", "key-and-remaining", "by-item-and-key",
         "named-fixed-fee-counts-without-include", "every-usage-price-named"],
)
def test_cost_by_dimension(dimensions: tuple[Dimension, ...], fees: bool, expected: dict[str, str]) -> None:
    """Each price's cost goes to the dimension naming its key or item, the others to the remaining one."""
    assert cost_by_dimension(COSTS, dimensions, include_fixed_fees=fees) == {k: D(v) for k, v in expected.items()}


def test_cost_of_a_price_no_dimension_takes_is_refused() -> None:
    """A usage price named by no dimension, with none taking the remaining prices, is UnmappedPrice."""
    with pytest.raises(UnmappedPrice, match="'tokens'"):
        cost_by_dimension(COSTS, (CALLS,), include_fixed_fees=False)


@pytest.mark.parametrize(
    ("stored", "overrides", "expected"),
    [
        (None, {}, [("usage_cost", "0.01", None)]),
        (None, {"usage_cost": D("0.02")}, [("usage_cost", "0.02", None)]),
        ([{"name": "api_calls", "unit_price": "0.001", "prices": ["calls"]},
          {"name": "usage_fee", "unit_price": "0.01", "prices": "remaining"}], {"usage_fee": D("0.005")},
         [("api_calls", "0.001", ("calls",)), ("usage_fee", "0.005", None)]),
    ],
    ids=["single", "single-contract-price", "two-with-contract-price"],
)
def test_dimensions_of(stored: list[dict[str, object]] | None, overrides: dict[str, D],
                       expected: list[tuple[str, str, tuple[str, ...] | None]]) -> None:
    """A listing's dimensions: stored ones or the single default; a contract's price wins by name."""
    found = dimensions_of("usage_cost", "0.01", stored, overrides)
    assert [(d.name, str(d.unit_price), d.prices) for d in found] == expected
