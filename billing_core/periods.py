"""Billing periods: cadences on a billing-cycle anchor, and proration by days.

Rules (docs/billing-rules.md §2): every instant is UTC; a period is half-open ``[start, end)``;
period boundaries fall at midnight UTC on the anchor day, and an anchor day the month does not
have (the 31st in April, the 30th in February) falls on that month's last day. Multi-month
cadences keep the anchor's month phase (a quarterly anchor of 15 February bills on 15 May,
15 August, ...). A subscription that starts between two boundaries gets a first partial
period ending at the next boundary; by default the anchor is the start date itself, so there
is no partial period.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache

__all__ = [
    "Cadence",
    "BillingAnchor",
    "Period",
    "months_in",
    "ensure_utc",
    "midnight",
    "boundary_on_or_before",
    "period_containing",
    "periods_between",
    "first_period",
    "day_count",
    "proration",
]


class Cadence(StrEnum):
    """How often a price is billed (Orb's ``cadence``)."""

    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    SEMI_ANNUAL = "semi_annual"
    ANNUAL = "annual"
    ONE_TIME = "one_time"


_MONTHS = {
    Cadence.MONTHLY: 1,
    Cadence.QUARTERLY: 3,
    Cadence.SEMI_ANNUAL: 6,
    Cadence.ANNUAL: 12,
}


def months_in(cadence: Cadence) -> int:
    """Return the number of months in one period of a recurring cadence."""
    try:
        return _MONTHS[Cadence(cadence)]
    except KeyError:
        raise ValueError(f"cadence {cadence!r} has no recurring period") from None


def ensure_utc(instant: datetime) -> datetime:
    """Return the instant as an aware UTC datetime; naive datetimes are refused."""
    if instant.tzinfo is UTC:
        return instant  # the common case, and a hot path (every period computation asks)
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"instant {instant.isoformat()} has no time zone; instants are UTC")
    return instant.astimezone(UTC)


def midnight(day: date) -> datetime:
    """Return midnight UTC at the start of ``day``."""
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclass(frozen=True, order=True)
class BillingAnchor:
    """The billing-cycle anchor: a day of month (1–31) and the month that fixes the phase."""

    day: int
    month: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.day <= 31:
            raise ValueError(f"billing cycle anchor day {self.day} is not in 1..31")
        if not 1 <= self.month <= 12:
            raise ValueError(f"billing cycle anchor month {self.month} is not in 1..12")

    @classmethod
    def from_date(cls, day: date | datetime) -> "BillingAnchor":
        """Anchor billing on the day (and month phase) of a date, usually the start date."""
        return cls(day=day.day, month=day.month)

    def boundary_in(self, year: int, month: int) -> date:
        """Return the boundary date in a month: the anchor day, or the month's last day."""
        return date(year, month, min(self.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True, order=True)
class Period:
    """A half-open interval of time ``[start, end)``."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"period ends ({self.end.isoformat()}) before it starts ({self.start.isoformat()})")

    def contains(self, instant: datetime) -> bool:
        """Return whether the instant lies in ``[start, end)``."""
        return self.start <= instant < self.end

    def clip(self, start: datetime, end: datetime | None) -> "Period | None":
        """Return the overlap with ``[start, end)`` (open end when ``None``), or None if empty."""
        lo = max(self.start, start)
        hi = self.end if end is None else min(self.end, end)
        return Period(lo, hi) if lo < hi else None

    @property
    def days(self) -> int:
        """Return the number of days, the start day counted and the end day not."""
        return day_count(self.start, self.end)


def _month_index(year: int, month: int) -> int:
    return year * 12 + (month - 1)


def _from_index(index: int) -> tuple[int, int]:
    return divmod(index, 12)[0], divmod(index, 12)[1] + 1


def boundary_on_or_before(instant: datetime, cadence: Cadence, anchor: BillingAnchor) -> datetime:
    """Return the latest period boundary of the cadence's grid at or before the instant."""
    instant = ensure_utc(instant)
    step = months_in(cadence)
    index = _month_index(instant.year, instant.month)
    phase = _month_index(0, anchor.month)
    index -= (index - phase) % step
    while True:
        boundary = midnight(anchor.boundary_in(*_from_index(index)))
        if boundary <= instant:
            return boundary
        index -= step


def _boundary_after(boundary: datetime, cadence: Cadence, anchor: BillingAnchor) -> datetime:
    index = _month_index(boundary.year, boundary.month) + months_in(cadence)
    return midnight(anchor.boundary_in(*_from_index(index)))


def period_containing(instant: datetime, cadence: Cadence, anchor: BillingAnchor) -> Period:
    """Return the full grid period ``[boundary, next boundary)`` that contains the instant."""
    return _period_containing(ensure_utc(instant), Cadence(cadence), anchor)


@lru_cache(maxsize=8192)
def _period_containing(instant: datetime, cadence: Cadence, anchor: BillingAnchor) -> Period:
    # Pure and hot (every charge of every subscription asks it): memoized.
    start = boundary_on_or_before(instant, cadence, anchor)
    return Period(start, _boundary_after(start, cadence, anchor))


def first_period(start: datetime, cadence: Cadence, anchor: BillingAnchor) -> Period:
    """Return a subscription's first period: from its start to the next boundary (maybe partial)."""
    start = ensure_utc(start)
    grid = period_containing(start, cadence, anchor)
    return Period(start, grid.end)


def periods_between(start: datetime, end: datetime, cadence: Cadence, anchor: BillingAnchor,
                    service_start: datetime | None = None,
                    service_end: datetime | None = None) -> list[Period]:
    """Return the grid periods overlapping ``[start, end)``, clipped to the service window.

    The first and last periods are partial when the service starts or ends between
    boundaries; periods are never clipped to ``[start, end)`` itself.
    """
    start, end = ensure_utc(start), ensure_utc(end)
    result: list[Period] = []
    cursor = period_containing(start, cadence, anchor)
    while cursor.start < end:
        lo = cursor.start if service_start is None else max(cursor.start, service_start)
        hi = cursor.end if service_end is None else min(cursor.end, service_end)
        if lo < hi:
            result.append(Period(lo, hi))
        cursor = Period(cursor.end, _boundary_after(cursor.end, cadence, anchor))
    return result


def day_count(start: datetime, end: datetime) -> int:
    """Return the days from start to end: the start day counted, the end day not."""
    return (ensure_utc(end).date() - ensure_utc(start).date()).days


def proration(service: Period, full: Period) -> Decimal:
    """Return days in service / days in period, as an exact Decimal fraction (≤ 1)."""
    total = full.days
    if total <= 0:
        return Decimal(0)
    used = min(service.days, total)
    return Decimal(used) / Decimal(total)
