"""Charges and their rated lines: what bills over which service period, and what it costs.

A charge is one price interval's price over one service period (a cadence period clipped to the
interval). Usage prices and ``in_arrear`` fixed fees bill when their service period ends inside
the window asked about, ``in_advance`` fixed fees when it starts inside it, one-time fees when
their interval starts inside it. A line is a charge rated (usage fetched once per metric and
window), adjusted in docs/billing-rules.md §6 order and rounded once (``money.round_money``);
proration is the one division (``money.divide``). Invoices (``invoices``) and costs (``costs``)
are both built from these lines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from billing_core.adjustments import (
    Adjustment, AdjustmentType, AppliedAdjustment, adjust_amount, applies_to, discount_groups,
    discount_quantity,
)
from billing_core.errors import UsageOutOfRange
from billing_core.money import ZERO, divide, format_decimal, round_money
from billing_core.periods import BillingAnchor, Cadence, Period, period_containing
from billing_core.pricing import BillingMode, Price, Rating, SubLine, rate
from billing_core.subscriptions import PriceInterval, Subscription
from billing_core.usage import EMPTY_USAGE, BatchUsageSource, MetricUsage, UsageRequest, UsageSource

__all__ = [
    "Charge", "LineItem", "LineTrace", "charges_for_period", "charges_for_timeframe", "decimal_text", "fetch_usage",
    "iso", "line_order", "rate_all", "rate_amounts", "usage_key",
]


def iso(instant: datetime | None) -> str | None:
    """Return an instant as ISO-8601 UTC with a ``Z`` suffix (stable serialization)."""
    if instant is None:
        return None
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def decimal_text(value: Decimal | None) -> str | None:
    return None if value is None else format_decimal(value)


# --- charges: what is rated, over which service period --------------------------------------


@dataclass(frozen=True)
class Charge:
    """One rating unit: a price interval over one service period of its cadence."""

    interval: PriceInterval
    service: Period        # the cadence period clipped to the interval and the subscription
    full: Period           # the whole cadence period, for proration
    usage_window: Period   # where usage is read (the service period clipped to a timeframe)
    prorate: bool = True

    @property
    def line_id(self) -> str:
        """Return the line's identity: stable when the service period is later shortened."""
        day = self.full.start
        return f"{self.interval.id}:{day.year:04d}{day.month:02d}{day.day:02d}"


_FAR = datetime(9999, 1, 1, tzinfo=UTC)


def _service_periods(sub: Subscription, interval: PriceInterval,
                     lo: datetime, hi: datetime) -> tuple[tuple[Period, Period], ...]:
    """Return (full cadence period, service period) for an interval's periods overlapping [lo, hi)."""
    svc_lo = interval.start if interval.start > sub.start else sub.start
    svc_hi = interval.end if interval.end is not None else _FAR
    if sub.end is not None and sub.end < svc_hi:
        svc_hi = sub.end
    if svc_lo >= svc_hi:
        return ()
    price = interval.price
    if price.cadence == Cadence.ONE_TIME:
        if lo <= svc_lo < hi or (svc_lo < hi and svc_hi > lo):
            window = Period(svc_lo, svc_hi)
            return ((window, window),)
        return ()
    if svc_hi <= lo or svc_lo >= hi:  # an interval ended before the window (a migrated version's): nothing
        return ()
    return _grid_periods(svc_lo, svc_hi, price.cadence, sub.anchor, lo, hi)


@lru_cache(maxsize=65536)
def _grid_periods(svc_lo: datetime, svc_hi: datetime, cadence: Cadence, anchor: BillingAnchor,
                  lo: datetime, hi: datetime) -> tuple[tuple[Period, Period], ...]:
    # Pure and hot (every charge of every invoice asks it; subscriptions started together and a
    # simulation's two timelines ask the same): memoized.
    found = []
    cursor = period_containing(max(lo, svc_lo), cadence, anchor)
    stop = min(hi, svc_hi)
    while cursor.start < stop:
        service = cursor.clip(svc_lo, svc_hi)
        if service is not None:
            found.append((cursor, service))
        cursor = period_containing(cursor.end, cadence, anchor)
    return tuple(found)


def charges_for_period(sub: Subscription, period: Period) -> list[Charge]:
    """Return the charges an invoice for a billing period holds (see the module docstring)."""
    result: list[Charge] = []
    for interval in sub.intervals:
        price = interval.price
        # A service period billed here ends after period.start, so its cadence period contains
        # period.start or starts later: the walk starts there (not a year back; it ran per charge).
        for full, service in _service_periods(sub, interval, period.start, period.end + timedelta(days=1)):
            if price.cadence == Cadence.ONE_TIME:
                billed = period.start <= service.start < period.end
            elif price.is_fixed and price.billing_mode == BillingMode.IN_ADVANCE:
                billed = period.start <= service.start < period.end
            else:
                billed = period.start < service.end <= period.end
            if billed:
                result.append(Charge(interval, service, full, service,
                                     prorate=price.cadence != Cadence.ONE_TIME))
    return result


def charges_for_timeframe(sub: Subscription, start: datetime, end: datetime) -> list[Charge]:
    """Return the charges accrued over ``[start, end)`` (cumulative costs).

    Usage prices count usage inside the timeframe; ``in_advance`` and one-time fees count when
    their service period starts inside it; ``in_arrear`` fixed fees accrue by days elapsed.
    """
    frame = Period(start, end)
    result: list[Charge] = []
    for interval in sub.intervals:
        price = interval.price
        for full, service in _service_periods(sub, interval, start, end):
            if price.is_fixed and (price.billing_mode == BillingMode.IN_ADVANCE or price.cadence == Cadence.ONE_TIME):
                if frame.contains(service.start):
                    result.append(Charge(interval, service, full, service,
                                         prorate=price.cadence != Cadence.ONE_TIME))
                continue
            window = service.clip(start, end)
            if window is not None:
                result.append(Charge(interval, window if price.is_fixed else service, full, window))
    return result


# --- lines ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LineTrace:
    """Where a line's number came from, for audit."""

    price_id: str
    price_key: str
    price_interval_id: str
    plan_id: str | None
    plan_version: int | None
    metric_id: str | None
    timeframe_start: datetime
    timeframe_end: datetime
    event_count: int
    skipped: int
    fragments: int = 0          # stored usage fragments added up for this line
    raw_events: int = 0         # events read one by one (window edges, or every event without fragments)

    def to_dict(self) -> dict[str, Any]:
        """Return the trace as JSON-ready data."""
        return {
            "price_id": self.price_id, "price_key": self.price_key,
            "price_interval_id": self.price_interval_id, "plan_id": self.plan_id,
            "plan_version": self.plan_version, "metric_id": self.metric_id,
            "timeframe_start": iso(self.timeframe_start), "timeframe_end": iso(self.timeframe_end),
            "event_count": self.event_count, "skipped": self.skipped,
            "answered_by": {"fragments": self.fragments, "raw_events": self.raw_events},
        }


@dataclass(frozen=True)
class LineItem:
    """One invoice line: a rated, adjusted, once-rounded charge (or a correction of one)."""

    id: str
    kind: str                        # "charge" | "correction"
    name: str
    price: Price
    start: datetime
    end: datetime
    quantity: Decimal
    subtotal_unrounded: Decimal      # after the usage discount, before amount adjustments
    amount_unrounded: Decimal        # after every adjustment
    amount: Decimal                  # amount_unrounded rounded once, HALF_UP
    currency: str
    trace: LineTrace
    sub_lines: tuple[SubLine, ...] = ()
    adjustments: tuple[AppliedAdjustment, ...] = ()
    proration: Decimal | None = None
    corrects_invoice_id: str | None = None
    corrects_line_id: str | None = None
    corrects_period_start: datetime | None = None

    @property
    def subtotal(self) -> Decimal:
        """Return the rounded subtotal (before adjustments)."""
        return round_money(self.subtotal_unrounded, self.currency)

    def to_dict(self) -> dict[str, Any]:
        """Return the line as JSON-ready data with decimal strings."""
        return {
            "id": self.id, "kind": self.kind, "name": self.name,
            "price_id": self.price.id, "price_key": self.price.key, "item_id": self.price.item_id,
            "model_type": self.price.model_type.value,
            "start_date": iso(self.start), "end_date": iso(self.end),
            "quantity": decimal_text(self.quantity),
            "subtotal": decimal_text(self.subtotal), "subtotal_unrounded": decimal_text(self.subtotal_unrounded),
            "amount": decimal_text(self.amount), "amount_unrounded": decimal_text(self.amount_unrounded),
            "proration": decimal_text(self.proration),
            "sub_line_items": [
                {"name": s.name, "quantity": decimal_text(s.quantity), "amount": decimal_text(s.amount),
                 "unit_amount": decimal_text(s.unit_amount), "first_unit": decimal_text(s.first_unit),
                 "last_unit": decimal_text(s.last_unit), "grouping": [list(g) for g in s.grouping]}
                for s in self.sub_lines
            ],
            "adjustments": [
                {"adjustment_id": a.adjustment_id, "adjustment_type": a.adjustment_type.value,
                 "amount": decimal_text(a.amount)} for a in self.adjustments
            ],
            "corrects_invoice_id": self.corrects_invoice_id,
            "corrects_line_id": self.corrects_line_id,
            "corrects_period_start": iso(self.corrects_period_start),
            "trace": self.trace.to_dict(),
        }


def _adjustments_for(sub: Subscription, charge: Charge) -> list[Adjustment]:
    found: list[Adjustment] = []
    for ai in sub.adjustment_intervals:
        if not ai.active_on(charge.service):
            continue
        if ai.applies_to_price_interval_ids:
            if charge.interval.id in ai.applies_to_price_interval_ids:
                found.append(ai.adjustment)
        elif applies_to(ai.adjustment, charge.interval.price.id, charge.interval.price.key):
            found.append(ai.adjustment)
    return found


def _prorated(amount: Decimal, service: Period, full: Period) -> tuple[Decimal, Decimal]:
    """Return (amount × days in service / days in period, that fraction), each one ``divide``."""
    total = full.days
    if total <= 0:
        return ZERO, ZERO
    used = min(service.days, total)
    return divide(amount * used, Decimal(total)), divide(Decimal(used), Decimal(total))


class _Rated:
    """A charge rated: what a line holds before it is one (``_rate_line``), or before a cost adds it up."""

    __slots__ = ("quantity", "subtotal", "total", "rating", "applied", "fraction", "event_count", "skipped",
                 "fragments", "raw_events")

    def __init__(self, quantity: Decimal, subtotal: Decimal, total: Decimal, rating: Rating,
                 applied: list[AppliedAdjustment], fraction: Decimal | None, counts: tuple[int, int, int, int]):
        self.quantity, self.subtotal, self.total, self.rating = quantity, subtotal, total, rating
        self.applied, self.fraction = applied, fraction
        self.event_count, self.skipped, self.fragments, self.raw_events = counts


_NO_COUNTS = (0, 0, 0, 0)


def _rate(sub: Subscription, charge: Charge, usage: MetricUsage | UsageOutOfRange | None,
          detail: bool = True) -> _Rated:
    """Rate and adjust one charge (docs/billing-rules.md §6): the one place a line's numbers come from.

    ``detail`` False leaves out the tiers' and groups' sub-lines (a cost adds up amounts only).
    """
    if isinstance(usage, UsageOutOfRange):
        raise usage
    price = charge.interval.price
    adjustments = _adjustments_for(sub, charge) if sub.adjustment_intervals else []
    applied: list[AppliedAdjustment] = []
    fraction: Decimal | None = None
    if price.is_fixed:
        quantity = price.fixed_price_quantity if price.fixed_price_quantity is not None else Decimal(1)
        rating = rate(price, quantity, detail=detail)
        subtotal = rating.amount
        if charge.prorate and charge.service != charge.full:
            subtotal, fraction = _prorated(subtotal, charge.service, charge.full)
        counts = _NO_COUNTS
    else:
        usage = usage or EMPTY_USAGE
        quantity = usage.quantity
        groups = usage.groups
        usage_discounts = [a for a in adjustments if a.adjustment_type == AdjustmentType.USAGE_DISCOUNT] \
            if adjustments else []
        if usage_discounts:
            before = rate(price, quantity, groups, detail=False).amount
            if groups is not None:
                groups = discount_groups(groups, usage_discounts)
                quantity = sum(groups.values(), ZERO)
            else:
                quantity, _ = discount_quantity(quantity, usage_discounts)
        rating = rate(price, quantity, groups, detail=detail)
        subtotal = rating.amount
        if usage_discounts:
            applied.extend(AppliedAdjustment(a.id, a.adjustment_type, ZERO) for a in usage_discounts[1:])
            applied.insert(0, AppliedAdjustment(usage_discounts[0].id, AdjustmentType.USAGE_DISCOUNT,
                                                subtotal - before))
        event_count = usage.event_count
        counts = (event_count, usage.skipped, usage.fragments or 0,
                  event_count if usage.raw_events is None else usage.raw_events)
    if adjustments or price.minimum_amount is not None or price.maximum_amount is not None:
        adjusted = adjust_amount(subtotal, [a for a in adjustments
                                            if a.adjustment_type != AdjustmentType.USAGE_DISCOUNT],
                                 minimum_amount=price.minimum_amount, maximum_amount=price.maximum_amount)
        total = adjusted.total
        applied.extend(adjusted.applied)
    else:  # most lines: nothing to adjust
        total = subtotal
    return _Rated(quantity, subtotal, total, rating, applied, fraction, counts)


def _rate_line(sub: Subscription, charge: Charge, usage: MetricUsage | UsageOutOfRange | None) -> LineItem:
    rated = _rate(sub, charge, usage)
    price, interval = charge.interval.price, charge.interval
    return LineItem(
        id=charge.line_id, kind="charge", name=price.name, price=price,
        start=charge.service.start, end=charge.service.end, quantity=rated.quantity,
        subtotal_unrounded=rated.subtotal, amount_unrounded=rated.total,
        amount=round_money(rated.total, sub.currency), currency=sub.currency,
        trace=LineTrace(
            price_id=price.id, price_key=price.key, price_interval_id=interval.id,
            plan_id=interval.plan_id, plan_version=interval.plan_version, metric_id=price.metric_id,
            timeframe_start=charge.usage_window.start, timeframe_end=charge.usage_window.end,
            event_count=rated.event_count, skipped=rated.skipped, fragments=rated.fragments,
            raw_events=rated.raw_events,
        ),
        sub_lines=rated.rating.sub_lines, adjustments=tuple(rated.applied), proration=rated.fraction,
    )


def rate_amounts(sub: Subscription, charges: Sequence[Charge],
                 usage: Mapping[UsageKey, MetricUsage | UsageOutOfRange]
                 ) -> list[tuple[Charge, Decimal, Decimal, Decimal]]:
    """Return (charge, quantity, subtotal, total) per charge, unrounded: the numbers ``rate_all``'s
    lines hold, without building the lines (costs add them up; nothing else of a line is read)."""
    out = []
    for charge in charges:
        key = usage_key(sub, charge)
        rated = _rate(sub, charge, None if key is None else usage.get(key, EMPTY_USAGE), detail=False)
        out.append((charge, rated.quantity, rated.subtotal, rated.total))
    return out


UsageKey = tuple[str, str, datetime, datetime, tuple[str, ...]]


def usage_key(sub: Subscription, charge: Charge) -> UsageKey | None:
    price = charge.interval.price
    if price.is_fixed:
        return None
    w = charge.usage_window
    return (price.metric_id, sub.customer_id, w.start, w.end, price.group_by)  # type: ignore[return-value]


def fetch_usage(keys: Iterable[UsageKey], source: UsageSource) -> dict[UsageKey, MetricUsage | UsageOutOfRange]:
    """Read every needed usage in bulk: per window, one batch when the source can, else per metric.

    A customer whose usage is beyond the range has its ``UsageOutOfRange`` in place of the usage.
    """
    windows: dict[tuple[datetime, datetime], dict[UsageRequest, set[str]]] = defaultdict(lambda: defaultdict(set))
    for metric_id, customer_id, start, end, group_by in keys:
        windows[(start, end)][UsageRequest(metric_id, group_by)].add(customer_id)
    found: dict[UsageKey, MetricUsage | UsageOutOfRange] = {}
    for (start, end), wanted in sorted(windows.items()):
        if isinstance(source, BatchUsageSource) and len(wanted) > 1:
            customers = sorted(set().union(*wanted.values()))
            batch = source.usage_bulk_many(sorted(wanted), customers, start, end)
            results = {request: batch[request] for request in wanted}
        else:
            results = {}
            for request, customers in sorted(wanted.items()):
                ordered = sorted(customers)
                if len(ordered) == 1:
                    try:
                        one: MetricUsage | UsageOutOfRange = source.usage(request.metric_id, ordered[0], start, end,
                                                                          request.group_by)
                    except UsageOutOfRange as exc:
                        one = exc
                    results[request] = {ordered[0]: one}
                else:
                    results[request] = source.usage_bulk(request.metric_id, ordered, start, end, request.group_by)
        for request, customers in wanted.items():
            per_customer = results[request]
            for customer_id in customers:
                found[(request.metric_id, customer_id, start, end, request.group_by)] = per_customer.get(
                    customer_id, EMPTY_USAGE)
    return found


def rate_all(sub: Subscription, charges: Sequence[Charge],
              usage: Mapping[UsageKey, MetricUsage | UsageOutOfRange]) -> list[LineItem]:
    lines = []
    for charge in charges:
        key = usage_key(sub, charge)
        lines.append(_rate_line(sub, charge, None if key is None else usage.get(key, EMPTY_USAGE)))
    return lines


def line_order(line: LineItem) -> tuple:
    return (line.kind != "charge", line.corrects_period_start or line.start, line.start,
            line.price.key, line.id)


