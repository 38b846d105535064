"""Price models: every rule of docs/billing-rules.md §5 and worked examples 1–4, 6, 7, 9."""

from decimal import Decimal as D

import pytest

from billing_core.money import round_money
from billing_core.pricing import InvalidPrice, config_to_dict, parse_config, rate

from .helpers import bulk, matrix, package, tiered, tiered_package, unit

EX1 = tiered((0, 10000, "0.001"), (10000, 100000, "0.0008"), (100000, None, "0.0005"))
EX2 = bulk((10, "0.50"), (1000, "0.40"))
EX3 = package(10, "0.80")
EX4 = tiered((0, 10, "0.50"), (10, None, "0.10"))
EX6 = tiered_package(10, (0, "1.00"), (100, "0.50"))


@pytest.mark.parametrize(
    ("price", "quantity", "expected"),
    [
        pytest.param(unit("2.50"), "4", "10.00", id="unit"),
        pytest.param(unit("0.067"), "55", "3.69", id="ex9-unit-half-up"),
        pytest.param(unit("0.00635"), "1000", "6.35", id="unit-sub-cent-rate"),
        pytest.param(unit("2.50"), "0", "0.00", id="unit-zero"),
        pytest.param(EX1, "150000", "107.00", id="ex1-tiered-150k"),
        pytest.param(EX1, "10000", "10.00", id="tiered-at-first-bound"),
        pytest.param(EX1, "10001", "10.00", id="tiered-one-past-first-bound"),
        pytest.param(EX1, "100000", "82.00", id="tiered-at-second-bound"),
        pytest.param(EX1, "100001", "82.00", id="tiered-one-past-second-bound"),
        pytest.param(EX1, "0", "0.00", id="tiered-zero"),
        pytest.param(EX4, "10", "5.00", id="ex4-tiered-q10"),
        pytest.param(EX4, "15", "5.50", id="ex4-tiered-q15"),
        pytest.param(EX4, "11", "5.10", id="tiered-first-unit-of-second-tier"),
        pytest.param(EX4, "10.5", "5.05", id="tiered-fractional-across-bound"),
        pytest.param(EX2, "10", "5.00", id="ex2-bulk-q10-upper-bound-inclusive"),
        pytest.param(EX2, "101", "40.40", id="ex2-bulk-q101"),
        pytest.param(EX2, "11", "4.40", id="bulk-one-past-bound"),
        pytest.param(EX2, "1000", "400.00", id="bulk-at-last-bound"),
        pytest.param(EX2, "1001", "400.40", id="bulk-beyond-last-bound-last-rate"),
        pytest.param(EX2, "0", "0.00", id="bulk-zero"),
        pytest.param(EX3, "4", "0.80", id="ex3-package-q4"),
        pytest.param(EX3, "11", "1.60", id="ex3-package-q11"),
        pytest.param(EX3, "0", "0.00", id="ex3-package-q0"),
        pytest.param(EX3, "10", "0.80", id="package-exact-multiple"),
        pytest.param(EX3, "0.1", "0.80", id="package-fraction-rounds-up"),
        pytest.param(EX6, "125", "11.50", id="ex6-tiered-package-q125"),
        pytest.param(EX6, "100", "10.00", id="tiered-package-at-bound"),
        pytest.param(EX6, "101", "10.50", id="tiered-package-one-past-bound"),
        pytest.param(EX6, "1", "1.00", id="tiered-package-one-unit"),
        pytest.param(EX6, "0", "0.00", id="tiered-package-zero"),
    ],
)
def test_rate(price, quantity, expected):
    """Each price model charges the quantity per its rule, rounded once HALF_UP."""
    assert str(round_money(rate(price, D(quantity)).amount, "USD")) == expected


def test_ex1_tier_sub_lines():
    """Example 1 shows one sub-line per tier reached, with its units and amount."""
    lines = rate(EX1, D(150000)).sub_lines
    assert [(l.quantity, l.amount) for l in lines] == [
        (D(10000), D("10.000")), (D(90000), D("72.0000")), (D(50000), D("25.0000"))]
    assert [l.name for l in lines] == ["Tier (0, 10000]", "Tier (10000, 100000]", "Tier (100000, ∞]"]


def test_ex6_tiered_package_sub_lines():
    """Example 6 rounds 125 up to 130 units: 10 packages at 1.00 and 3 at 0.50."""
    lines = rate(EX6, D(125)).sub_lines
    assert [(l.quantity, l.amount) for l in lines] == [(D(10), D("10.00")), (D(3), D("1.50"))]


EX7 = matrix(["region"], "0.015", [(["us-east"], "0.01"), (["eu"], "0.02")])


def test_ex7_matrix():
    """Example 7 charges each region at its rate, unknown regions at the default, as sub-lines."""
    groups = {("us-east",): D(100), ("eu",): D(50), ("ap",): D(10)}
    result = rate(EX7, D(160), groups)
    assert round_money(result.amount, "USD") == D("2.15")
    assert [(l.name, l.amount) for l in result.sub_lines] == [
        ("region: ap", D("0.150")), ("region: eu", D("1.00")), ("region: us-east", D("1.00"))]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(("gpt-4", "us"), "0.03", id="both-match"),
        pytest.param(("gpt-4", "eu"), "0.02", id="wildcard-second"),
        pytest.param(("gpt-3", "us"), "0.001", id="default"),
    ],
)
def test_matrix_two_dimensions(values, expected):
    """A two-property matrix matches exact pairs first, then a None wildcard, then the default."""
    p = matrix(["model", "region"], "0.001", [(["gpt-4", "us"], "0.03"), (["gpt-4", None], "0.02")])
    assert p.config.amount_for(values) == D(expected)


@pytest.mark.parametrize(
    ("model", "raw", "match"),
    [
        pytest.param("tiered", {"tiers": [{"first_unit": 1, "last_unit": 5, "unit_amount": "1"}]}, "start at 0", id="tiered-not-from-zero"),
        pytest.param("tiered", {"tiers": [{"first_unit": 0, "last_unit": 5, "unit_amount": "1"},
                                          {"first_unit": 6, "unit_amount": "1"}]}, "previous last_unit", id="tiered-gap"),
        pytest.param("tiered", {"tiers": [{"first_unit": 0, "unit_amount": "1"},
                                          {"first_unit": 6, "unit_amount": "1"}]}, "only the last", id="tiered-open-middle"),
        pytest.param("bulk", {"tiers": [{"maximum_units": 10, "unit_amount": "1"}, {"maximum_units": 5, "unit_amount": "1"}]}, "increase", id="bulk-decreasing"),
        pytest.param("package", {"package_amount": "1", "package_size": 0}, "package_size", id="package-zero-size"),
        pytest.param("tiered_package", {"package_size": "10", "tiers": [{"tier_lower_bound": "0", "per_unit": "1"},
                                                                       {"tier_lower_bound": "15", "per_unit": "1"}]}, "multiple", id="tiered-package-bound-not-multiple"),
        pytest.param("matrix", {"dimensions": ["a", "b", "c"], "default_unit_amount": "1"}, "one or two", id="matrix-three-dims"),
        pytest.param("unit", {}, "unit_config.unit_amount", id="unit-missing-amount"),
        pytest.param("unit", {"unit_amount": "x"}, "unit_config.unit_amount", id="unit-bad-amount"),
        pytest.param("volume", {}, "model_type", id="unknown-model"),
    ],
)
def test_parse_config_rejects(model, raw, match):
    """Invalid configs are refused with the offending field named."""
    with pytest.raises((InvalidPrice, ValueError), match=match):
        parse_config(model, raw)


@pytest.mark.parametrize(
    ("model", "raw"),
    [
        pytest.param("unit", {"unit_amount": "0.067"}, id="unit"),
        pytest.param("tiered", {"tiers": [{"first_unit": 0.0, "last_unit": 10.0, "unit_amount": "0.50"},
                                          {"first_unit": 10.0, "last_unit": None, "unit_amount": "0.10"}]}, id="tiered"),
        pytest.param("bulk", {"tiers": [{"maximum_units": 10.0, "unit_amount": "0.50"},
                                        {"maximum_units": None, "unit_amount": "0.40"}]}, id="bulk"),
        pytest.param("package", {"package_amount": "0.80", "package_size": 10}, id="package"),
        pytest.param("tiered_package", {"package_size": "10", "tiers": [{"tier_lower_bound": "0", "per_unit": "1.00"},
                                                                       {"tier_lower_bound": "100", "per_unit": "0.50"}]}, id="tiered-package"),
        pytest.param("matrix", {"dimensions": ["region"], "default_unit_amount": "0.015",
                                "matrix_values": [{"dimension_values": ["eu"], "unit_amount": "0.02"}]}, id="matrix"),
    ],
)
def test_config_round_trip(model, raw):
    """Orb-shaped configs parse and serialize back to the same JSON."""
    assert config_to_dict(parse_config(model, raw)) == raw
