"""Money: minor units, HALF_UP rounding and decimal parsing."""

import decimal
import math
from decimal import Decimal as D
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from billing_core.money import (
    InvalidAmount, format_decimal, minor_units, parse_decimal, round_money, to_minor_units,
)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param("3.685", "USD", "3.69", id="ex9-half-up-not-bankers"),
        pytest.param("0.125", "USD", "0.13", id="midpoint-even-neighbour-goes-up"),
        pytest.param("0.135", "USD", "0.14", id="midpoint-odd-neighbour-goes-up"),
        pytest.param("0.1249999", "USD", "0.12", id="just-below-midpoint"),
        pytest.param("-0.125", "USD", "-0.13", id="negative-midpoint-away-from-zero"),
        pytest.param("-0.001", "USD", "0.00", id="negative-zero-normalised"),
        pytest.param("2.5", "JPY", "3", id="jpy-zero-decimals-midpoint"),
        pytest.param("1234.4", "JPY", "1234", id="jpy-below-midpoint"),
        pytest.param("1.0005", "KWD", "1.001", id="kwd-three-decimals"),
        pytest.param("10", "usd", "10.00", id="lowercase-currency"),
    ],
)
def test_round_money(amount, currency, expected):
    """Amounts round HALF_UP to the currency's minor unit."""
    assert str(round_money(D(amount), currency)) == expected


@pytest.mark.parametrize(
    ("currency", "decimals"),
    [pytest.param("USD", 2, id="usd"), pytest.param("EUR", 2, id="eur"),
     pytest.param("JPY", 0, id="jpy"), pytest.param("KWD", 3, id="kwd"),
     pytest.param("XYZ", 2, id="unknown-defaults-to-2")],
)
def test_minor_units(currency, decimals):
    """Each currency has its ISO 4217 number of decimals."""
    assert minor_units(currency) == decimals


def test_round_money_refuses_float():
    """A float never reaches the rounding helper."""
    with pytest.raises(TypeError):
        round_money(3.685, "USD")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [pytest.param("0.00635", D("0.00635"), id="string"), pytest.param(7, D(7), id="int"),
     pytest.param(0.1, D("0.1"), id="float-via-repr"), pytest.param(D("1.50"), D("1.50"), id="decimal")],
)
def test_parse_decimal(value, expected):
    """Strings, ints, Decimals and float reprs parse exactly."""
    assert parse_decimal(value) == expected


@pytest.mark.parametrize(
    "value",
    [pytest.param("abc", id="text"), pytest.param("NaN", id="nan"), pytest.param("Infinity", id="inf"),
     pytest.param(True, id="bool"), pytest.param(None, id="none"), pytest.param([], id="list")],
)
def test_parse_decimal_rejects(value):
    """Anything that is not a finite decimal is refused with the field named."""
    with pytest.raises(InvalidAmount, match="unit_amount"):
        parse_decimal(value, "unit_amount")


def test_to_minor_units_and_format():
    """Minor units are integers of the rounded amount; formatting never uses exponents."""
    assert to_minor_units(D("12.345"), "USD") == 1235
    assert format_decimal(D("1E+2")) == "100"
    assert format_decimal(D("-0.00")) == "0.00"


@pytest.mark.parametrize("value", [pytest.param("1e999999", id="huge"), pytest.param("1e-40", id="tiny")])
def test_parse_decimal_rejects_out_of_range(value):
    """Values beyond 10^±30 are refused instead of overflowing later."""
    with pytest.raises(InvalidAmount, match="out of range"):
        parse_decimal(value, "unit_amount")


# --- division in integers, against the exact fraction -------------------------------------------

_amounts = st.decimals(min_value=-10**12, max_value=10**12, places=9, allow_nan=False, allow_infinity=False)
_divisors = st.decimals(min_value=-10**6, max_value=10**6, places=4, allow_nan=False,
                         allow_infinity=False).filter(lambda d: d != 0)


@given(_amounts, _divisors)
def test_divide_equals_the_exact_fraction_rounded_half_even(numerator, denominator):
    """``divide`` (integer arithmetic) is the exact quotient when it terminates within its places,
    else the exact fraction rounded half-even there — computed here from ``Fraction``."""
    from billing_core.money import DIVISION_PLACES, divide

    exact_ratio = Fraction(numerator) / Fraction(denominator)
    assert Fraction(divide(numerator, denominator)) == Fraction(round(exact_ratio * 10**DIVISION_PLACES),
                                                                  10**DIVISION_PLACES)


@given(_amounts, _divisors, st.sampled_from(["ROUND_FLOOR", "ROUND_CEILING", "ROUND_HALF_UP"]))
def test_divide_to_integral_equals_the_exact_fraction_rounded(numerator, denominator, rounding):
    from billing_core.money import divide_to_integral

    ratio = Fraction(numerator) / Fraction(denominator)
    half_up = math.floor(abs(ratio) + Fraction(1, 2))
    expected = {"ROUND_FLOOR": math.floor(ratio), "ROUND_CEILING": math.ceil(ratio),
                "ROUND_HALF_UP": half_up if ratio >= 0 else -half_up}[rounding]
    assert divide_to_integral(numerator, denominator, getattr(decimal, rounding)) == expected
