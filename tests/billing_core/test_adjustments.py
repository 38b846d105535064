"""Adjustments: order, per-line application, and worked examples 5 and 10."""

from decimal import Decimal as D

import pytest

from billing_core.adjustments import (
    Adjustment, AdjustmentType as T, InvalidAdjustment, adjust_amount, applies_to, discount_groups,
    discount_quantity,
)
from billing_core.money import round_money


def adj(kind, value, *names, id=None):
    return Adjustment(id=id or kind.value, adjustment_type=kind, value=D(value), applies_to_price_ids=names)


@pytest.mark.parametrize(
    ("subtotal", "adjustments", "minimum", "maximum", "expected"),
    [
        pytest.param("20.00", [adj(T.PERCENTAGE_DISCOUNT, "0.1"), adj(T.MINIMUM, "50"), adj(T.MAXIMUM, "500")],
                     None, None, "50.00", id="ex10-discount-then-minimum"),
        pytest.param("22.50", [], "50", None, "50.00", id="ex5-q9-minimum"),
        pytest.param("47.50", [], "50", None, "50.00", id="ex5-q19-minimum"),
        pytest.param("50.00", [], "50", None, "50.00", id="ex5-q20-at-minimum"),
        pytest.param("70.00", [], "50", None, "70.00", id="ex5-q28-above-minimum"),
        pytest.param("90.00", [], "50", None, "90.00", id="ex5-q36-above-minimum"),
        pytest.param("100", [adj(T.AMOUNT_DISCOUNT, "10"), adj(T.PERCENTAGE_DISCOUNT, "0.5")],
                     None, None, "45.00", id="amount-before-percentage"),
        pytest.param("100", [adj(T.PERCENTAGE_DISCOUNT, "0.5"), adj(T.MAXIMUM, "40")], None, None, "40.00",
                     id="maximum-after-percentage"),
        pytest.param("100", [adj(T.MINIMUM, "200"), adj(T.MAXIMUM, "150")], None, None, "150.00",
                     id="maximum-after-minimum"),
        pytest.param("5", [adj(T.AMOUNT_DISCOUNT, "10")], None, None, "0.00", id="amount-discount-floors-at-zero"),
        pytest.param("10", [adj(T.MINIMUM, "30", id="a"), adj(T.MINIMUM, "20", id="b")], "25", None, "30.00",
                     id="highest-minimum-wins"),
        pytest.param("100", [adj(T.MAXIMUM, "80")], None, "60", "60.00", id="lowest-maximum-wins"),
        pytest.param("0.015", [adj(T.PERCENTAGE_DISCOUNT, "0.5")], None, None, "0.01", id="percentage-on-unrounded"),
        pytest.param("100", [adj(T.PERCENTAGE_DISCOUNT, "1")], None, None, "0.00", id="full-percentage"),
    ],
)
def test_adjust_amount(subtotal, adjustments, minimum, maximum, expected):
    """Adjustments apply amount → percentage → minimum → maximum on the unrounded subtotal."""
    result = adjust_amount(D(subtotal), adjustments,
                           minimum_amount=None if minimum is None else D(minimum),
                           maximum_amount=None if maximum is None else D(maximum))
    assert round_money(result.total, "USD") == D(expected)


def test_ex10_steps_are_traced():
    """Example 10 records each step: 20.00 → 18.00 → minimum 50.00."""
    result = adjust_amount(D("20.00"), [adj(T.PERCENTAGE_DISCOUNT, "0.1"), adj(T.MINIMUM, "50"), adj(T.MAXIMUM, "500")])
    assert [(a.adjustment_type, a.amount) for a in result.applied] == [
        (T.PERCENTAGE_DISCOUNT, D("-2.000")), (T.MINIMUM, D("32.000"))]


@pytest.mark.parametrize(
    ("quantity", "units", "expected"),
    [pytest.param("200", "50", "150", id="reduces"), pytest.param("20", "50", "0", id="floors-at-zero")],
)
def test_usage_discount(quantity, units, expected):
    """A usage discount removes units before rating, never below zero."""
    assert discount_quantity(D(quantity), [adj(T.USAGE_DISCOUNT, units)])[0] == D(expected)


def test_usage_discount_on_groups():
    """A usage discount on grouped usage is taken from groups in sorted order."""
    groups = {("us",): D(5), ("eu",): D(3)}
    assert discount_groups(groups, [adj(T.USAGE_DISCOUNT, "4")]) == {("eu",): D(0), ("us",): D(4)}


@pytest.mark.parametrize(
    ("names", "expected"),
    [pytest.param((), True, id="no-names-applies-to-all"), pytest.param(("p1",), True, id="by-price-id"),
     pytest.param(("api",), True, id="by-price-key"), pytest.param(("p2",), False, id="other-price")],
)
def test_applies_to(names, expected):
    """An adjustment applies to the prices it names by id or key, or to all when it names none."""
    assert applies_to(adj(T.MINIMUM, "1", *names), "p1", "api") is expected


@pytest.mark.parametrize(
    ("kind", "value"),
    [pytest.param(T.PERCENTAGE_DISCOUNT, "1.5", id="percentage-above-one"),
     pytest.param(T.MINIMUM, "-1", id="negative")],
)
def test_invalid_adjustments(kind, value):
    """Out-of-range adjustment values are refused."""
    with pytest.raises(InvalidAdjustment):
        adj(kind, value)
