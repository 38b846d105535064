"""Invoices and costs: a deterministic function of the timeline, the usage and the period.

An invoice for a billing period holds one line per price interval and price-cadence period
that bills in it: usage prices and ``in_arrear`` fixed fees bill when their service period
ends inside the invoice period, ``in_advance`` fixed fees when it starts inside it, one-time
fees when their interval starts inside it. A line is rated, adjusted in billing.md order and
rounded once; the invoice total is the sum of rounded lines. Issued invoices are snapshots:
recomputing an issued period later yields correction lines on the next invoice, never edits.

``costs`` gives the cumulative cost over a timeframe (what the marketplace sync reads), both
unrounded and rounded; ``costs_bulk`` does the same for many subscriptions with one grouped
usage query per metric and window, and ``costs_each`` gives each subscription whose costs
cannot be computed (``OutOfRange``: usage beyond the supported range) its error instead, so
one customer's data never takes the others down.

Arithmetic runs in ``money.exact()`` (exact, or ``InexactAmount``); proration is the one
division (``money.divide``) and each line is rounded once (``money.round_money``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, DecimalException
from typing import Any

from billing_core.adjustments import (
    Adjustment, AdjustmentType, AppliedAdjustment, adjust_amount, applies_to, discount_groups,
    discount_quantity,
)
from billing_core.errors import NotFound, OutOfRange, UsageOutOfRange
from billing_core.money import ZERO, divide, exact, format_decimal, inexact, round_money
from billing_core.periods import Cadence, Period, period_containing
from billing_core.pricing import BillingMode, Price, SubLine, rate
from billing_core.subscriptions import PriceInterval, Subscription, billing_period
from billing_core.usage import EMPTY_USAGE, BatchUsageSource, MetricUsage, UsageRequest, UsageSource

__all__ = [
    "InvoiceNotFound",
    "Charge",
    "LineTrace",
    "LineItem",
    "Invoice",
    "PriceCost",
    "Costs",
    "DailyUsage",
    "MetricDailyUsage",
    "charges_for_period",
    "charges_for_timeframe",
    "compute_invoice",
    "upcoming_invoice",
    "issue_invoice",
    "costs",
    "costs_bulk",
    "costs_each",
    "usage_by_day",
    "iso",
]


def iso(instant: datetime | None) -> str | None:
    """Return an instant as ISO-8601 UTC with a ``Z`` suffix (stable serialization)."""
    if instant is None:
        return None
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _dec(value: Decimal | None) -> str | None:
    return None if value is None else format_decimal(value)


# --- charges: what is rated, over which service period --------------------------------------


class InvoiceNotFound(NotFound):
    """No invoice (issued or computable) has this id."""

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
                     lo: datetime, hi: datetime) -> Iterable[tuple[Period, Period]]:
    """Yield (full cadence period, service period) for an interval's periods overlapping [lo, hi)."""
    svc_lo = max(interval.start, sub.start)
    ends = [e for e in (interval.end, sub.end) if e is not None]
    svc_hi = min(ends) if ends else _FAR
    if svc_lo >= svc_hi:
        return
    price = interval.price
    if price.cadence == Cadence.ONE_TIME:
        if lo <= svc_lo < hi or (svc_lo < hi and svc_hi > lo):
            window = Period(svc_lo, svc_hi)
            yield window, window
        return
    cursor = period_containing(max(lo, svc_lo), price.cadence, sub.anchor)
    stop = min(hi, svc_hi)
    while cursor.start < stop:
        service = cursor.clip(svc_lo, svc_hi)
        if service is not None:
            yield cursor, service
        cursor = period_containing(cursor.end, price.cadence, sub.anchor)


def charges_for_period(sub: Subscription, period: Period) -> list[Charge]:
    """Return the charges an invoice for a billing period holds (see the module docstring)."""
    result: list[Charge] = []
    for interval in sub.intervals:
        price = interval.price
        # Look one cadence back and forward so periods billing in this invoice are found.
        for full, service in _service_periods(sub, interval, period.start - timedelta(days=370),
                                              period.end + timedelta(days=1)):
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

    def to_dict(self) -> dict[str, Any]:
        """Return the trace as JSON-ready data."""
        return {
            "price_id": self.price_id, "price_key": self.price_key,
            "price_interval_id": self.price_interval_id, "plan_id": self.plan_id,
            "plan_version": self.plan_version, "metric_id": self.metric_id,
            "timeframe_start": iso(self.timeframe_start), "timeframe_end": iso(self.timeframe_end),
            "event_count": self.event_count, "skipped": self.skipped,
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
            "quantity": _dec(self.quantity),
            "subtotal": _dec(self.subtotal), "subtotal_unrounded": _dec(self.subtotal_unrounded),
            "amount": _dec(self.amount), "amount_unrounded": _dec(self.amount_unrounded),
            "proration": _dec(self.proration),
            "sub_line_items": [
                {"name": s.name, "quantity": _dec(s.quantity), "amount": _dec(s.amount),
                 "unit_amount": _dec(s.unit_amount), "first_unit": _dec(s.first_unit),
                 "last_unit": _dec(s.last_unit), "grouping": [list(g) for g in s.grouping]}
                for s in self.sub_lines
            ],
            "adjustments": [
                {"adjustment_id": a.adjustment_id, "adjustment_type": a.adjustment_type.value,
                 "amount": _dec(a.amount)} for a in self.adjustments
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


def _rate_line(sub: Subscription, charge: Charge, usage: MetricUsage | UsageOutOfRange | None) -> LineItem:
    if isinstance(usage, UsageOutOfRange):
        raise usage
    price = charge.interval.price
    adjustments = _adjustments_for(sub, charge)
    applied: list[AppliedAdjustment] = []
    fraction: Decimal | None = None
    if price.is_fixed:
        quantity = price.fixed_price_quantity if price.fixed_price_quantity is not None else Decimal(1)
        rating = rate(price, quantity)
        subtotal = rating.amount
        if charge.prorate and charge.service != charge.full:
            subtotal, fraction = _prorated(subtotal, charge.service, charge.full)
        event_count = skipped = 0
    else:
        usage = usage or EMPTY_USAGE
        quantity = usage.quantity
        groups = usage.groups
        usage_discounts = [a for a in adjustments if a.adjustment_type == AdjustmentType.USAGE_DISCOUNT]
        if usage_discounts:
            before = rate(price, quantity, groups).amount
            if groups is not None:
                groups = discount_groups(groups, usage_discounts)
                quantity = sum(groups.values(), ZERO)
            else:
                quantity, _ = discount_quantity(quantity, usage_discounts)
        rating = rate(price, quantity, groups)
        subtotal = rating.amount
        if usage_discounts:
            applied.extend(AppliedAdjustment(a.id, a.adjustment_type, ZERO) for a in usage_discounts[1:])
            applied.insert(0, AppliedAdjustment(usage_discounts[0].id, AdjustmentType.USAGE_DISCOUNT,
                                                subtotal - before))
        event_count, skipped = usage.event_count, usage.skipped
    adjusted = adjust_amount(subtotal, [a for a in adjustments if a.adjustment_type != AdjustmentType.USAGE_DISCOUNT],
                             minimum_amount=price.minimum_amount, maximum_amount=price.maximum_amount)
    applied.extend(adjusted.applied)
    interval = charge.interval
    return LineItem(
        id=charge.line_id, kind="charge", name=price.name, price=price,
        start=charge.service.start, end=charge.service.end, quantity=quantity,
        subtotal_unrounded=subtotal, amount_unrounded=adjusted.total,
        amount=round_money(adjusted.total, sub.currency), currency=sub.currency,
        trace=LineTrace(
            price_id=price.id, price_key=price.key, price_interval_id=interval.id,
            plan_id=interval.plan_id, plan_version=interval.plan_version, metric_id=price.metric_id,
            timeframe_start=charge.usage_window.start, timeframe_end=charge.usage_window.end,
            event_count=event_count, skipped=skipped,
        ),
        sub_lines=rating.sub_lines, adjustments=tuple(applied), proration=fraction,
    )


UsageKey = tuple[str, str, datetime, datetime, tuple[str, ...]]


def _usage_key(sub: Subscription, charge: Charge) -> UsageKey | None:
    price = charge.interval.price
    if price.is_fixed:
        return None
    w = charge.usage_window
    return (price.metric_id, sub.customer_id, w.start, w.end, price.group_by)  # type: ignore[return-value]


def _fetch(keys: Iterable[UsageKey], source: UsageSource) -> dict[UsageKey, MetricUsage | UsageOutOfRange]:
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


def _rate_all(sub: Subscription, charges: Sequence[Charge],
              usage: Mapping[UsageKey, MetricUsage | UsageOutOfRange]) -> list[LineItem]:
    lines = []
    for charge in charges:
        key = _usage_key(sub, charge)
        lines.append(_rate_line(sub, charge, None if key is None else usage.get(key, EMPTY_USAGE)))
    return lines


def _line_order(line: LineItem) -> tuple:
    return (line.kind != "charge", line.corrects_period_start or line.start, line.start,
            line.price.key, line.id)


# --- invoices ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Invoice:
    """An invoice for one subscription and billing period (computed, or an issued snapshot)."""

    subscription_id: str
    customer_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    line_items: tuple[LineItem, ...]
    status: str = "draft"            # "upcoming" | "draft" | "issued"
    id: str | None = None
    issued_at: datetime | None = None
    invoice_number: str | None = None

    @property
    def total(self) -> Decimal:
        """Return the sum of the rounded lines."""
        with exact():
            return sum((line.amount for line in self.line_items), round_money(ZERO, self.currency))

    @property
    def subtotal(self) -> Decimal:
        """Return the sum of rounded lines (adjustments here are per line, so equal to total)."""
        return self.total

    @property
    def period(self) -> Period:
        return Period(self.period_start, self.period_end)

    def to_dict(self) -> dict[str, Any]:
        """Return the invoice as JSON-ready data, lines in a stable order, decimal strings."""
        return {
            "id": self.id, "invoice_number": self.invoice_number, "status": self.status,
            "subscription_id": self.subscription_id, "customer_id": self.customer_id,
            "currency": self.currency,
            "period_start": iso(self.period_start), "period_end": iso(self.period_end),
            "issued_at": iso(self.issued_at),
            "subtotal": _dec(self.subtotal), "total": _dec(self.total),
            "line_items": [line.to_dict() for line in sorted(self.line_items, key=_line_order)],
        }

    def to_json(self) -> str:
        """Return the canonical serialization: same invoice, byte-identical text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _charge_lines(sub: Subscription, period: Period, source: UsageSource) -> list[LineItem]:
    charges = charges_for_period(sub, period)
    usage = _fetch([k for k in (_usage_key(sub, c) for c in charges) if k is not None], source)
    return _rate_all(sub, charges, usage)


def _corrections(sub: Subscription, before: Period, issued: Sequence[Invoice],
                 source: UsageSource) -> list[LineItem]:
    """Return correction lines for every issued period before ``before`` (billing.md example 12)."""
    prior = sorted({(inv.period_start, inv.period_end) for inv in issued
                    if inv.status == "issued" and inv.period_end <= before.start
                    and inv.subscription_id == sub.id})
    corrections: list[LineItem] = []
    for start, end in prior:
        originals = [inv for inv in issued if (inv.period_start, inv.period_end) == (start, end)]
        invoice_id = originals[0].id if originals else None
        base: dict[str, list[LineItem]] = defaultdict(list)
        for inv in issued:
            for line in inv.line_items:
                if line.kind == "charge" and (inv.period_start, inv.period_end) == (start, end):
                    base[line.id].append(line)
                elif line.kind == "correction" and line.corrects_period_start == start:
                    base[line.corrects_line_id or ""].append(line)
        fresh = {line.id: line for line in _charge_lines(sub, Period(start, end), source)}
        for line_id in sorted(set(base) | set(fresh)):
            was = base.get(line_id, [])
            now_line = fresh.get(line_id)
            was_q = sum((l.quantity for l in was), ZERO)
            was_amount = sum((l.amount for l in was), ZERO)
            was_unrounded = sum((l.amount_unrounded for l in was), ZERO)
            new_q = now_line.quantity if now_line else ZERO
            new_amount = now_line.amount if now_line else ZERO
            new_unrounded = now_line.amount_unrounded if now_line else ZERO
            if new_amount == was_amount and new_q == was_q:
                continue
            model = now_line or was[0]
            corrections.append(replace(
                model, id=f"correction:{start.strftime('%Y%m%d')}:{line_id}", kind="correction",
                name=f"Correction: {model.name}", quantity=new_q - was_q,
                subtotal_unrounded=new_unrounded - was_unrounded, amount_unrounded=new_unrounded - was_unrounded,
                amount=round_money(new_amount - was_amount, sub.currency), sub_lines=(), adjustments=(),
                proration=None, corrects_invoice_id=invoice_id, corrects_line_id=line_id,
                corrects_period_start=start,
            ))
    return corrections


@exact()
def compute_invoice(sub: Subscription, period: Period, usage_source: UsageSource, *, now: datetime,
                    issued: Sequence[Invoice] = ()) -> Invoice:
    """Compute the invoice of a billing period, with corrections of earlier issued invoices."""
    lines = _charge_lines(sub, period, usage_source)
    lines += _corrections(sub, period, issued, usage_source)
    return Invoice(
        subscription_id=sub.id, customer_id=sub.customer_id, currency=sub.currency,
        period_start=period.start, period_end=period.end,
        line_items=tuple(sorted(lines, key=_line_order)),
        status="upcoming" if now < period.end else "draft",
    )


def upcoming_invoice(sub: Subscription, usage_source: UsageSource, *, now: datetime,
                     issued: Sequence[Invoice] = ()) -> Invoice:
    """Compute the invoice of the billing period containing ``now``."""
    return compute_invoice(sub, billing_period(sub, now), usage_source, now=now, issued=issued)


def issue_invoice(invoice: Invoice, *, id: str, now: datetime, invoice_number: str | None = None) -> Invoice:
    """Return the immutable issued snapshot of a computed invoice."""
    if invoice.status == "issued":
        raise ValueError(f"invoice {invoice.id} is already issued")
    return replace(invoice, id=id, status="issued", issued_at=now, invoice_number=invoice_number or id)


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
            "price_id": self.price.id, "price_key": self.price.key, "quantity": _dec(self.quantity),
            "subtotal": _dec(self.subtotal), "total": _dec(self.total),
            "subtotal_unrounded": _dec(self.subtotal_unrounded), "total_unrounded": _dec(self.total_unrounded),
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
            "subtotal": _dec(self.subtotal), "total": _dec(self.total),
            "subtotal_unrounded": _dec(self.subtotal_unrounded), "total_unrounded": _dec(self.total_unrounded),
            "per_price_costs": [p.to_dict() for p in self.per_price_costs],
        }


def _aggregate_costs(sub: Subscription, start: datetime, end: datetime, lines: Sequence[LineItem]) -> Costs:
    zero = round_money(ZERO, sub.currency)
    by_price: dict[str, list[Any]] = {}
    for line in lines:
        acc = by_price.get(line.price.id)
        if acc is None:
            acc = by_price[line.price.id] = [line.price, ZERO, ZERO, ZERO, zero, zero, set(), None]
        acc[1] += line.quantity
        acc[2] += line.subtotal_unrounded
        acc[3] += line.amount_unrounded
        acc[4] += line.subtotal
        acc[5] += line.amount
        acc[6].add(line.trace.price_interval_id)
        acc[7] = line.trace.plan_version
    per_price = [
        PriceCost(price=acc[0], quantity=acc[1], subtotal_unrounded=acc[2], total_unrounded=acc[3],
                  subtotal=acc[4], total=acc[5], price_interval_ids=tuple(sorted(acc[6])), plan_version=acc[7])
        for _, acc in sorted(by_price.items(), key=lambda kv: (kv[1][0].key, kv[0]))
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


@exact()
def costs_each(requests: Sequence[tuple[Subscription, datetime, datetime]],
               usage_source: UsageSource) -> list[Costs | OutOfRange]:
    """Return costs like ``costs_bulk``, or for a subscription that cannot be computed its error."""
    planned = [(sub, start, end, charges_for_timeframe(sub, start, end)) for sub, start, end in requests]
    keys = [k for sub, _, _, charges in planned for k in (_usage_key(sub, c) for c in charges) if k is not None]
    usage = _fetch(keys, usage_source)
    out: list[Costs | OutOfRange] = []
    for sub, start, end, charges in planned:
        try:
            out.append(_aggregate_costs(sub, start, end, _rate_all(sub, charges, usage)))
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
