"""Billing periods: anchors, month ends, leap years, partial periods and proration."""

from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from billing_core.periods import (
    BillingAnchor, Cadence, Period, day_count, first_period, period_containing, periods_between,
    proration,
)


def t(y, m, d, h=0):
    return datetime(y, m, d, h, tzinfo=UTC)


@pytest.mark.parametrize(
    ("instant", "cadence", "anchor", "start", "end"),
    [
        pytest.param(t(2025, 1, 15), Cadence.MONTHLY, BillingAnchor(1), t(2025, 1, 1), t(2025, 2, 1), id="monthly-first"),
        pytest.param(t(2025, 1, 1), Cadence.MONTHLY, BillingAnchor(1), t(2025, 1, 1), t(2025, 2, 1), id="start-instant-inclusive"),
        pytest.param(t(2025, 1, 31, 23), Cadence.MONTHLY, BillingAnchor(1), t(2025, 1, 1), t(2025, 2, 1), id="end-instant-exclusive"),
        pytest.param(t(2025, 2, 10), Cadence.MONTHLY, BillingAnchor(31), t(2025, 1, 31), t(2025, 2, 28), id="jan31-anchor-feb"),
        pytest.param(t(2025, 3, 1), Cadence.MONTHLY, BillingAnchor(31), t(2025, 2, 28), t(2025, 3, 31), id="jan31-anchor-back-to-31"),
        pytest.param(t(2024, 2, 29), Cadence.MONTHLY, BillingAnchor(31), t(2024, 2, 29), t(2024, 3, 31), id="jan31-anchor-leap-feb"),
        pytest.param(t(2025, 4, 30), Cadence.MONTHLY, BillingAnchor(31), t(2025, 4, 30), t(2025, 5, 31), id="jan31-anchor-april"),
        pytest.param(t(2025, 2, 27), Cadence.MONTHLY, BillingAnchor(30), t(2025, 1, 30), t(2025, 2, 28), id="anchor30-feb"),
        pytest.param(t(2025, 5, 20), Cadence.QUARTERLY, BillingAnchor(15, 2), t(2025, 5, 15), t(2025, 8, 15), id="quarterly-phase"),
        pytest.param(t(2025, 1, 20), Cadence.QUARTERLY, BillingAnchor(15, 2), t(2024, 11, 15), t(2025, 2, 15), id="quarterly-year-wrap"),
        pytest.param(t(2025, 9, 1), Cadence.SEMI_ANNUAL, BillingAnchor(1, 1), t(2025, 7, 1), t(2026, 1, 1), id="semi-annual"),
        pytest.param(t(2025, 1, 20), Cadence.ANNUAL, BillingAnchor(29, 2), t(2024, 2, 29), t(2025, 2, 28), id="annual-leap-anchor"),
        pytest.param(t(2028, 2, 29), Cadence.ANNUAL, BillingAnchor(29, 2), t(2028, 2, 29), t(2029, 2, 28), id="annual-leap-anchor-leap-year"),
    ],
)
def test_period_containing(instant, cadence, anchor, start, end):
    """The grid period containing an instant is [boundary, next boundary)."""
    assert period_containing(instant, cadence, anchor) == Period(start, end)


@pytest.mark.parametrize(
    ("sub_start", "anchor", "end"),
    [
        pytest.param(t(2025, 1, 15, 10), BillingAnchor(1), t(2025, 2, 1), id="partial-to-next-anchor"),
        pytest.param(t(2025, 1, 15), BillingAnchor.from_date(t(2025, 1, 15)), t(2025, 2, 15), id="aligned-to-own-start"),
        pytest.param(t(2025, 1, 31), BillingAnchor.from_date(t(2025, 1, 31)), t(2025, 2, 28), id="aligned-31st"),
    ],
)
def test_first_period(sub_start, anchor, end):
    """A mid-period start gets a partial first period unless aligned to its own start."""
    assert first_period(sub_start, Cadence.MONTHLY, anchor) == Period(sub_start, end)


def test_periods_between_clips_service():
    """Periods over a window are clipped to the service start and end, not to the window."""
    periods = periods_between(t(2025, 1, 1), t(2025, 4, 1), Cadence.MONTHLY, BillingAnchor(1),
                              service_start=t(2025, 1, 10), service_end=t(2025, 3, 5))
    assert periods == [Period(t(2025, 1, 10), t(2025, 2, 1)), Period(t(2025, 2, 1), t(2025, 3, 1)),
                       Period(t(2025, 3, 1), t(2025, 3, 5))]


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        pytest.param(t(2025, 1, 1), t(2025, 1, 13), 12, id="ex11-jan1-to-jan13"),
        pytest.param(t(2025, 1, 1), t(2025, 2, 1), 31, id="january"),
        pytest.param(t(2024, 2, 1), t(2024, 3, 1), 29, id="leap-february"),
        pytest.param(t(2025, 2, 1), t(2025, 3, 1), 28, id="february"),
        pytest.param(t(2025, 1, 1, 15), t(2025, 1, 2, 3), 1, id="start-day-counted-end-not"),
        pytest.param(t(2025, 1, 1), t(2025, 1, 1), 0, id="empty"),
    ],
)
def test_day_count(start, end, days):
    """Days count the start day and not the end day."""
    assert day_count(start, end) == days


@pytest.mark.parametrize(
    ("service", "full", "fraction"),
    [
        pytest.param(Period(t(2025, 1, 1), t(2025, 1, 13)), Period(t(2025, 1, 1), t(2025, 2, 1)), D(12) / D(31), id="ex11-used"),
        pytest.param(Period(t(2025, 1, 13), t(2025, 2, 1)), Period(t(2025, 1, 1), t(2025, 2, 1)), D(19) / D(31), id="ex11-refund"),
        pytest.param(Period(t(2024, 2, 15), t(2024, 3, 1)), Period(t(2024, 2, 1), t(2024, 3, 1)), D(15) / D(29), id="leap-feb-half"),
        pytest.param(Period(t(2025, 1, 1), t(2025, 2, 1)), Period(t(2025, 1, 1), t(2025, 2, 1)), D(1), id="full"),
    ],
)
def test_proration(service, full, fraction):
    """Proration is days in service over days in period."""
    assert proration(service, full) == fraction


def test_anchor_validation_and_naive_instants():
    """Anchor days outside 1..31 and naive instants are refused."""
    with pytest.raises(ValueError):
        BillingAnchor(32)
    with pytest.raises(ValueError):
        period_containing(datetime(2025, 1, 1), Cadence.MONTHLY, BillingAnchor(1))
    with pytest.raises(ValueError):
        period_containing(t(2025, 1, 1), Cadence.ONE_TIME, BillingAnchor(1))
