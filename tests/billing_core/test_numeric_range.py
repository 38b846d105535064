"""The numeric range: accepted values aggregate exactly on both databases; beyond it, an error, never a clamp."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import Engine

from billing_core.customers import create_customer
from billing_core.errors import InexactAmount, UsageOutOfRange
from billing_core.events import EventValidationFailed, store_records, to_micros, validate_batch
from billing_core.metric_definition import MetricDefinition
from billing_core.money import divide, divide_to_integral, exact, round_money
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.events import SqlEventStore
from billing_core.pricing import rate
from billing_core.sql_usage import SqlUsageSource
from billing_core.sql_usage_batch import BatchSqlUsageSource
from billing_core.usage import UsageRequest
from worker.db import session_scope

from .helpers import package, unit

D = Decimal
NOW = datetime(2026, 12, 15, 12, 0, tzinfo=timezone.utc)
START = datetime(2026, 11, 1, tzinfo=timezone.utc)
END = datetime(2026, 12, 1, tzinfo=timezone.utc)
SUM, MAX, LATEST = (MetricDefinition("api_call", agg, "tokens") for agg in ("sum", "max", "latest"))  # type: ignore[arg-type]
DEFINITIONS = {"sum": SUM, "max": MAX, "latest": LATEST}
_customers = itertools.count()


def new_customer(engine: Engine) -> str:
    """Create a customer of its own (examples share one database) and return its id."""
    customer_id = f"c{next(_customers)}"
    with session_scope(engine) as session:
        create_customer(SqlCustomerRepository(session), customer_id=customer_id, name=customer_id,
                        email=f"{customer_id}@x.test", external_customer_id=None, now=NOW)
    return customer_id


def ingest_values(engine: Engine, customer_id: str, values: list[Any]) -> None:
    """Ingest one api_call per value, a minute apart, in batches of 500 (validated like POST /v1/ingest)."""
    events = [{"idempotency_key": f"{customer_id}-{i}", "event_name": "api_call", "customer_id": customer_id,
               "timestamp": (START + timedelta(minutes=i)).isoformat(), "properties": {"tokens": v}}
              for i, v in enumerate(values)]
    for at in range(0, len(events), 500):
        with session_scope(engine) as session:
            store_records(SqlEventStore(session), validate_batch(events[at:at + 500], now=NOW))


def store_raw(engine: Engine, customer_id: str, texts: list[str]) -> None:
    """Store events whose properties JSON bypasses ingest validation (data stored before the range)."""
    records = [(f"{customer_id}-raw{i}", "api_call", customer_id, None, to_micros(START + timedelta(hours=i)),
                '{"tokens":' + text + "}") for i, text in enumerate(texts)]
    with session_scope(engine) as session:
        store_records(SqlEventStore(session), records)


def batch_usage(engine: Engine, customer_ids: list[str]) -> dict[str, Any]:
    """Ask sum and max of tokens through the fused batch path; return {aggregation: {customer: result}}."""
    source = BatchSqlUsageSource(engine, {"sum": SUM, "max": MAX, "latest": LATEST})
    found = source.usage_bulk_many([UsageRequest(m) for m in DEFINITIONS], customer_ids, START, END)
    return {m: found[UsageRequest(m)] for m in DEFINITIONS}


# Every accepted value is n x 10^-p with |n| < 10^15 and p <= 9; edges are drawn often.
accepted = st.one_of(
    st.builds(lambda n, p: D(n).scaleb(-p), st.integers(-(10**15) + 1, 10**15 - 1), st.integers(0, 9)),
    st.integers(-(10**15) + 1, 10**15 - 1),
    st.sampled_from([D("999999999999999"), D("-999999999999999"), D("99999999999999.9"), D("0.999999999"),
                     D("123456.123456789"), D("5000000000.5"), D("1234567890123.45"), D("0.000000001")]),
)


@pytest.mark.postgres
@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(accepted, min_size=1, max_size=40))
def test_accepted_values_aggregate_exactly(any_engine: Engine, values: list[Any]) -> None:
    """Sum, max and latest of any accepted values equal Python's Decimal answers, one by one and batched."""
    customer = new_customer(any_engine)
    ingest_values(any_engine, customer, values)
    decimals = [D(v) for v in values]
    expected = {"sum": sum(decimals, D(0)), "max": max(decimals), "latest": decimals[-1]}
    source = SqlUsageSource(any_engine, DEFINITIONS)
    batched = batch_usage(any_engine, [customer])
    for metric, want in expected.items():
        assert source.usage(metric, customer, START, END).quantity == want, metric
        assert batched[metric][customer].quantity == want, metric


@pytest.mark.postgres
def test_sum_overflowing_64_bits_midway_is_still_exact(any_engine: Engine) -> None:
    """Thousands of values near 10^15 that cancel out: SQLite's 64-bit sum overflows midway, the answer is exact."""
    customer = new_customer(any_engine)
    big = 999_999_999_999_999
    values: list[Any] = [big] * 9300 + [-big] * 9300 + [D("0.5")]
    ingest_values(any_engine, customer, values)
    assert SqlUsageSource(any_engine, DEFINITIONS).usage("sum", customer, START, END).quantity == D("0.5")
    assert batch_usage(any_engine, [customer])["sum"][customer].quantity == D("0.5")


@pytest.mark.postgres
def test_total_beyond_the_range_fails_that_customer_only(any_engine: Engine) -> None:
    """A total of 10^18 or more is UsageOutOfRange for its customer; the others get their exact usage."""
    heavy, light = new_customer(any_engine), new_customer(any_engine)
    ingest_values(any_engine, heavy, [999_999_999_999_999] * 1001)
    ingest_values(any_engine, light, [D("5000000000.5"), D("5000000000.5")])
    one_by_one = SqlUsageSource(any_engine, DEFINITIONS).usage_bulk("sum", [heavy, light], START, END)
    batched = batch_usage(any_engine, [heavy, light])["sum"]
    for found in (one_by_one, batched):
        assert isinstance(found[heavy], UsageOutOfRange) and heavy in str(found[heavy])
        assert found[light].quantity == D("10000000001")
    with pytest.raises(UsageOutOfRange, match="'sum'"):
        SqlUsageSource(any_engine, DEFINITIONS).usage("sum", heavy, START, END)


@pytest.mark.postgres
@pytest.mark.parametrize("stored", [
    pytest.param("1e30", id="real-1e30"),
    pytest.param("1000000000000000.5", id="real-past-1e15"),
    pytest.param("12345678901234567891", id="twenty-digit-integer"),
])
def test_stored_values_beyond_the_range_are_errors_not_clamps(any_engine: Engine, stored: str) -> None:
    """Values stored before ingest checked the range give an exact answer or UsageOutOfRange, never a clamped number.

    A max beyond 10^15 is out of range on both databases; a sum is refused on SQLite (its double
    cannot hold the value) and exact on PostgreSQL while the total stays below 10^18.
    """
    bad, good = new_customer(any_engine), new_customer(any_engine)
    store_raw(any_engine, bad, [stored, "1"])
    ingest_values(any_engine, good, [7])
    exact_sum = D(stored) + 1
    source = SqlUsageSource(any_engine, DEFINITIONS)
    batched = batch_usage(any_engine, [bad, good])
    for metric in ("sum", "max"):
        for found in (source.usage_bulk(metric, [bad, good], START, END), batched[metric]):
            result = found[bad]
            if metric == "max" or abs(exact_sum) >= 10**18 or any_engine.dialect.name == "sqlite":
                assert isinstance(result, UsageOutOfRange), (metric, result)
            else:
                assert result.quantity == exact_sum
            assert found[good].quantity == D(7)


@pytest.mark.parametrize("value", [
    pytest.param(D("1E+30"), id="1e30"),
    pytest.param(D("1000000000000000.5"), id="past-1e15"),
    pytest.param(1_000_000_000_000_000, id="int-1e15"),
    pytest.param(12345678901234567891, id="twenty-digit-int"),
    pytest.param(D("0.0000000001"), id="ten-places"),
    pytest.param(D("1234567.123456789"), id="sixteen-digits"),
    pytest.param(1e16, id="float-1e16"),
])
def test_ingest_refuses_values_outside_the_range(value: Any) -> None:
    """A number outside the range fails its event, naming the event key and the property."""
    events = [{"idempotency_key": "ok", "event_name": "e", "customer_id": "c", "timestamp": NOW.isoformat(),
               "properties": {"tokens": 1}},
              {"idempotency_key": "k-bad", "event_name": "e", "customer_id": "c", "timestamp": NOW.isoformat(),
               "properties": {"tokens": value, "region": "us"}}]
    with pytest.raises(EventValidationFailed) as caught:
        validate_batch(events, now=NOW)
    assert [key for key, _ in caught.value.failures] == ["k-bad"]
    assert "properties.tokens" in caught.value.failures[0][1][0]


@pytest.mark.parametrize("value", [
    pytest.param(999_999_999_999_999, id="largest-int"),
    pytest.param(D("99999999999999.9"), id="fifteen-digits-one-place"),
    pytest.param(D("0.000000001"), id="nine-places"),
    pytest.param(D("1.500000000000"), id="trailing-zeros-aside"),
    pytest.param(D("-123456.123456789"), id="negative"),
])
def test_ingest_accepts_values_inside_the_range(value: Any) -> None:
    """Numbers inside the range are accepted with their text kept."""
    (record,) = validate_batch([{"idempotency_key": "k", "event_name": "e", "customer_id": "c",
                                 "timestamp": NOW.isoformat(), "properties": {"tokens": value}}], now=NOW)
    assert record[5] == '{"tokens":' + str(value) + "}"


# --- money arithmetic -------------------------------------------------------------------------------

def test_quantity_times_price_is_exact_beyond_28_digits() -> None:
    """A product needing more than Python's default 28 digits is exact, not silently rounded."""
    quantity = D("999999999999999999.999999999")
    price = unit("0.000000000000000000000000000123")
    with exact():
        amount = rate(price, quantity).amount
    assert Fraction(amount) == Fraction(quantity) * Fraction(D("0.000000000000000000000000000123"))


def test_package_count_is_the_exact_ceiling() -> None:
    """Packages are the ceiling of the exact quotient, even where a 28-digit quotient would round to a whole."""
    quantity = D("300000000000000000.000000000001")  # / 3 = 10^17 + 3.3e-13: 28 digits would say 10^17
    price = package("3", "1", id="pk")
    with exact():
        amount = rate(price, quantity).amount
    assert amount == D(100000000000000001)


@pytest.mark.parametrize(("numerator", "denominator", "expected"), [
    pytest.param("49", "2", "24.5", id="terminating-is-exact"),
    pytest.param("1", "3", "0." + "3" * 100, id="repeating-rounds-at-100-places"),
    pytest.param("2", "3", "0." + "6" * 99 + "7", id="rounds-half-even-up"),
])
def test_divide(numerator: str, denominator: str, expected: str) -> None:
    """The one division gives the exact quotient, or rounds it at 100 decimal places."""
    assert str(divide(D(numerator), D(denominator))) == expected


@pytest.mark.parametrize(("cost", "price", "rounding", "units"), [
    pytest.param("100000000000000000000.00", "0.01", ROUND_FLOOR, 10**22, id="1e20-usd-in-cents"),
    pytest.param("0.0299999999999999999999999999999", "0.01", ROUND_FLOOR, 2, id="floor-below-a-whole"),
    pytest.param("0.0299999999999999999999999999999", "0.01", ROUND_CEILING, 3, id="ceiling"),
    pytest.param("0.025", "0.01", ROUND_HALF_UP, 3, id="half-up"),
])
def test_divide_to_integral(cost: str, price: str, rounding: str, units: int) -> None:
    """Whole units come from the exact quotient (a 28-digit quotient would round 2.99...9 up to 3)."""
    assert divide_to_integral(D(cost), D(price), rounding) == units


def test_round_money_rounds_large_amounts_once() -> None:
    """Rounding to cents keeps every digit of an amount beyond 28 digits."""
    assert round_money(D("123456789012345678901234567890.125"), "USD") == D("123456789012345678901234567890.13")


def test_arithmetic_needing_more_than_the_precision_is_an_error() -> None:
    """A product beyond 400 significant digits raises InexactAmount instead of rounding."""
    with pytest.raises(InexactAmount):
        with exact():
            _ = D("1." + "1" * 250) * D("1." + "3" * 250)
