"""Costs: the cumulative cost of a subscription over a timeframe, and its usage per day.

``costs`` gives the cost over a timeframe (what the marketplace sync reads), both unrounded and
rounded; ``costs_bulk`` does the same for many subscriptions with one grouped usage query per
metric and window, and ``costs_each`` gives each subscription whose costs cannot be computed
(``OutOfRange``: usage beyond the supported range) its error instead, so one customer's data
never takes the others down. Arithmetic runs in ``money.exact()`` (exact, or ``InexactAmount``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, DecimalException
from typing import Any

from billing_core.bulk import without_gc
from billing_core.errors import OutOfRange
from billing_core.lines import Charge, charges_for_timeframe, decimal_text, fetch_usage, iso, rate_amounts, usage_key
from billing_core.money import ZERO, exact, inexact, round_money
from billing_core.pricing import Price
from billing_core.subscriptions import Subscription
from billing_core.usage import UsageSource

__all__ = ["PriceCost", "Costs", "costs", "costs_bulk", "costs_each", "DailyUsage", "MetricDailyUsage", "usage_by_day"]


# --- costs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PriceCost:
    """Cumulative cost of one price over a timeframe, unrounded and rounded."""

    price: Price
    quantity: Decimal
    subtotal_unrounded: Decimal
    total_unrounded: Decimal
    subtotal: Decimal
    total: Decimal
    price_interval_ids: tuple[str, ...]
    plan_version: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "price_id": self.price.id, "price_key": self.price.key, "quantity": decimal_text(self.quantity),
            "subtotal": decimal_text(self.subtotal), "total": decimal_text(self.total),
            "subtotal_unrounded": decimal_text(self.subtotal_unrounded), "total_unrounded": decimal_text(self.total_unrounded),
            "price_interval_ids": list(self.price_interval_ids), "plan_version": self.plan_version,
        }


@dataclass(frozen=True)
class Costs:
    """A subscription's cumulative costs over ``[timeframe_start, timeframe_end)``."""

    subscription_id: str
    customer_id: str
    currency: str
    timeframe_start: datetime
    timeframe_end: datetime
    per_price_costs: tuple[PriceCost, ...]

    @property
    def subtotal(self) -> Decimal:
        with exact():
            return sum((p.subtotal for p in self.per_price_costs), round_money(ZERO, self.currency))

    @property
    def total(self) -> Decimal:
        with exact():
            return sum((p.total for p in self.per_price_costs), round_money(ZERO, self.currency))

    @property
    def subtotal_unrounded(self) -> Decimal:
        with exact():
            return sum((p.subtotal_unrounded for p in self.per_price_costs), ZERO)

    @property
    def total_unrounded(self) -> Decimal:
        with exact():
            return sum((p.total_unrounded for p in self.per_price_costs), ZERO)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subscription_id": self.subscription_id, "customer_id": self.customer_id,
            "currency": self.currency,
            "timeframe_start": iso(self.timeframe_start), "timeframe_end": iso(self.timeframe_end),
            "subtotal": decimal_text(self.subtotal), "total": decimal_text(self.total),
            "subtotal_unrounded": decimal_text(self.subtotal_unrounded), "total_unrounded": decimal_text(self.total_unrounded),
            "per_price_costs": [p.to_dict() for p in self.per_price_costs],
        }


def _aggregate_costs(sub: Subscription, start: datetime, end: datetime,
                     amounts: Sequence[tuple[Charge, Decimal, Decimal, Decimal]]) -> Costs:
    """Add up each price's charges (``rate_amounts``): quantities and amounts unrounded, and each
    charge's amounts rounded once, as its line would be, then summed."""
    currency = sub.currency
    zero = round_money(ZERO, currency)
    by_price: dict[str, list[Any]] = {}
    for charge, quantity, subtotal, total in amounts:
        interval = charge.interval
        price = interval.price
        acc = by_price.get(price.id)
        if acc is None:
            acc = by_price[price.id] = [price, ZERO, ZERO, ZERO, zero, zero, set(), None]
        acc[1] += quantity
        acc[2] += subtotal
        acc[3] += total
        acc[4] += round_money(subtotal, currency)  # the line's subtotal
        acc[5] += round_money(total, currency)  # the line's amount
        acc[6].add(interval.id)
        acc[7] = interval.plan_version
    ordered = by_price.values() if len(by_price) == 1 else [
        acc for _, acc in sorted(by_price.items(), key=lambda kv: (kv[1][0].key, kv[0]))]
    per_price = [
        PriceCost(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5],
                  tuple(acc[6]) if len(acc[6]) == 1 else tuple(sorted(acc[6])), acc[7])
        for acc in ordered
    ]
    return Costs(subscription_id=sub.id, customer_id=sub.customer_id, currency=sub.currency,
                 timeframe_start=start, timeframe_end=end, per_price_costs=tuple(per_price))


def costs(sub: Subscription, timeframe_start: datetime, timeframe_end: datetime,
          usage_source: UsageSource) -> Costs:
    """Return cumulative costs per price over ``[timeframe_start, timeframe_end)``."""
    return costs_bulk([(sub, timeframe_start, timeframe_end)], usage_source)[0]


def costs_bulk(requests: Sequence[tuple[Subscription, datetime, datetime]],
               usage_source: UsageSource) -> list[Costs]:
    """Return costs for many subscriptions, reading usage in bulk (one call per metric and window).

    Raises the first subscription's ``OutOfRange`` when one cannot be computed (``costs_each``
    gives every subscription its own answer).
    """
    results = costs_each(requests, usage_source)
    for result in results:
        if isinstance(result, OutOfRange):
            raise result
    return results  # type: ignore[return-value]


@without_gc
@exact()
def costs_each(requests: Sequence[tuple[Subscription, datetime, datetime]],
               usage_source: UsageSource) -> list[Costs | OutOfRange]:
    """Return costs like ``costs_bulk``, or for a subscription that cannot be computed its error."""
    planned = [(sub, start, end, charges_for_timeframe(sub, start, end)) for sub, start, end in requests]
    keys = [k for sub, _, _, charges in planned for k in (usage_key(sub, c) for c in charges) if k is not None]
    usage = fetch_usage(keys, usage_source)
    out: list[Costs | OutOfRange] = []
    for sub, start, end, charges in planned:
        try:
            out.append(_aggregate_costs(sub, start, end, rate_amounts(sub, charges, usage)))
        except OutOfRange as exc:
            out.append(exc)
        except DecimalException as exc:
            out.append(inexact(exc))
    return out


# --- usage per metric per day -------------------------------------------------------------------

@dataclass(frozen=True)
class DailyUsage:
    timeframe_start: datetime
    timeframe_end: datetime
    quantity: Decimal


@dataclass(frozen=True)
class MetricDailyUsage:
    metric_id: str
    usage: tuple[DailyUsage, ...]


def usage_by_day(sub: Subscription, timeframe_start: datetime, timeframe_end: datetime,
                 usage_source: UsageSource) -> list[MetricDailyUsage]:
    """Return, for each metric the subscription prices, its usage per UTC day in the timeframe."""
    lo = max(timeframe_start, sub.start)
    hi = timeframe_end if sub.end is None else min(timeframe_end, sub.end)
    metrics = sorted({i.price.metric_id for i in sub.intervals
                      if i.price.metric_id is not None and i.overlaps(lo, hi)})
    result = []
    for metric_id in metrics:
        days = []
        cursor = lo
        while cursor < hi:
            day_end = min(datetime.combine(cursor.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC), hi)
            days.append(DailyUsage(cursor, day_end,
                                   usage_source.usage(metric_id, sub.customer_id, cursor, day_end).quantity))
            cursor = day_end
        result.append(MetricDailyUsage(metric_id, tuple(days)))
    return result

