"""Subscriptions as timelines of price intervals and adjustment intervals.

A subscription is a customer on a plan version from a start (to an optional end), billed on a
billing-cycle anchor. What it is charged is its **timeline**: price intervals (a price over
``[start, end)``) and adjustment intervals. Every change — creation overrides, cancellation, a
plan change, a negotiated rate — is a pure function returning a new subscription with an edited
timeline and one more entry in its edit log. Each edit has an effective instant, possibly in the
past; usage before it stays priced by the old intervals (docs/billing-rules.md §9).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from billing_core.adjustments import Adjustment
from billing_core.errors import NotFound
from billing_core.money import FieldError
from billing_core.periods import BillingAnchor, Cadence, Period, ensure_utc, months_in, period_containing
from billing_core.plans import Plan
from billing_core.pricing import Price

__all__ = [
    "SubscriptionNotFound",
    "SubscriptionError",
    "ChangeOption",
    "PriceInterval",
    "AdjustmentInterval",
    "PlanPhase",
    "TimelineEdit",
    "Subscription",
    "ReplacePrice",
    "AddPrice",
    "AddAdjustment",
    "IntervalEdit",
    "create_subscription",
    "cancel",
    "schedule_plan_change",
    "edit_price_intervals",
    "billing_period",
    "billing_cadence",
    "log_edit",
    "next_id",
]


class SubscriptionNotFound(NotFound):
    """No subscription has this id."""


class SubscriptionError(FieldError):
    """A timeline edit breaks a rule (ends before it starts, unknown interval, already ended)."""


class ChangeOption(StrEnum):
    """When a cancellation or plan change takes effect (Orb's option names)."""

    IMMEDIATE = "immediate"
    REQUESTED_DATE = "requested_date"
    END_OF_SUBSCRIPTION_TERM = "end_of_subscription_term"


@dataclass(frozen=True)
class PriceInterval:
    """A price billed over ``[start, end)``; ``plan_version`` is None for subscription-level prices."""

    id: str
    price: Price
    start: datetime
    end: datetime | None
    plan_id: str | None = None
    plan_version: int | None = None
    source: str = "plan"

    def overlaps(self, start: datetime, end: datetime) -> bool:
        """Return whether the interval shares time with ``[start, end)``."""
        return self.start < end and (self.end is None or self.end > start)


@dataclass(frozen=True)
class AdjustmentInterval:
    """An adjustment active over ``[start, end)``, for the prices it names (or all)."""

    id: str
    adjustment: Adjustment
    start: datetime
    end: datetime | None
    plan_version: int | None = None
    applies_to_price_interval_ids: tuple[str, ...] = ()

    def active_on(self, period: Period) -> bool:
        """Return whether the adjustment is active at any point of the period."""
        return self.start < period.end and (self.end is None or self.end > period.start)


@dataclass(frozen=True)
class PlanPhase:
    """The plan version a subscription is on over ``[start, end)``."""

    plan_id: str
    plan_version: int
    start: datetime
    end: datetime | None


@dataclass(frozen=True)
class TimelineEdit:
    """One entry of the edit log: what changed, effective when, recorded when."""

    sequence: int
    kind: str
    effective_at: datetime
    recorded_at: datetime
    details: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Subscription:
    """A customer's subscription and its full timeline."""

    id: str
    customer_id: str
    currency: str
    start: datetime
    end: datetime | None
    anchor: BillingAnchor
    cadence: Cadence
    phases: tuple[PlanPhase, ...]
    intervals: tuple[PriceInterval, ...]
    adjustment_intervals: tuple[AdjustmentInterval, ...] = ()
    edits: tuple[TimelineEdit, ...] = ()
    external_marketplace: str | None = None
    external_marketplace_reporting_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None

    def status(self, now: datetime) -> str:
        """Return Orb's status at an instant: ``upcoming``, ``active`` or ``ended``."""
        if now < self.start:
            return "upcoming"
        if self.end is not None and now >= self.end:
            return "ended"
        return "active"

    def phase_at(self, instant: datetime) -> PlanPhase:
        """Return the plan phase in force at an instant (the last one started by then)."""
        started = [p for p in self.phases if p.start <= instant]
        return started[-1] if started else self.phases[0]

    def interval(self, interval_id: str) -> PriceInterval:
        """Return a price interval by id."""
        for candidate in self.intervals:
            if candidate.id == interval_id:
                return candidate
        raise SubscriptionError(f"price_interval_id: {interval_id} is not on subscription {self.id}")

    def window(self) -> tuple[datetime, datetime | None]:
        """Return the subscription's ``[start, end)``."""
        return self.start, self.end


@dataclass(frozen=True)
class ReplacePrice:
    """Replace a plan price (named by id or key) by another price for this subscription."""

    replaces_price_id: str
    price: Price


@dataclass(frozen=True)
class AddPrice:
    """Add a price to the subscription from ``start`` (default: the edit's instant) to ``end``."""

    price: Price
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class AddAdjustment:
    """Add an adjustment from ``start`` (default: the edit's instant) to ``end``."""

    adjustment: Adjustment
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class IntervalEdit:
    """Move a price interval's start and/or end (None keeps the current value)."""

    price_interval_id: str
    start: datetime | None = None
    end: datetime | None = None
    clear_end: bool = False


# --- helpers --------------------------------------------------------------------------------

def billing_cadence(prices: Iterable[Price]) -> Cadence:
    """Return the subscription's billing cadence: the shortest recurring cadence of its prices."""
    recurring = [p.cadence for p in prices if p.cadence != Cadence.ONE_TIME]
    return min(recurring, key=months_in) if recurring else Cadence.MONTHLY


def billing_period(sub: Subscription, instant: datetime) -> Period:
    """Return the subscription's billing period containing an instant, clipped to its window."""
    instant = ensure_utc(instant)
    # Outside the window, the nearest period inside it.
    if instant < sub.start:
        instant = sub.start
    elif sub.end is not None and instant >= sub.end and sub.end > sub.start:
        instant = sub.end - _TICK
    grid = period_containing(instant, sub.cadence, sub.anchor)
    start = max(grid.start, sub.start)
    end = grid.end if sub.end is None else max(start, min(grid.end, sub.end))
    return Period(start, end)


_TICK = datetime.resolution


def _check_instant(value: datetime, field_name: str) -> datetime:
    try:
        return ensure_utc(value)
    except ValueError:
        raise SubscriptionError(f"{field_name}: must be an instant with a time zone") from None


def next_id(sub_id: str, prefix: str, existing: Iterable[str]) -> str:
    """Return the next free interval id of a subscription (``<sub>_pi<n>``, ``<sub>_ai<n>``)."""
    taken = set(existing)
    n = len(taken) + 1
    while f"{sub_id}_{prefix}{n}" in taken:
        n += 1
    return f"{sub_id}_{prefix}{n}"


def log_edit(sub: Subscription, kind: str, effective_at: datetime, now: datetime,
             **details: object) -> tuple[TimelineEdit, ...]:
    """Return the edit log with one more entry (details without None values, sorted)."""
    entry = TimelineEdit(
        sequence=len(sub.edits) + 1, kind=kind, effective_at=effective_at, recorded_at=now,
        details=tuple(sorted((k, str(v)) for k, v in details.items() if v is not None)),
    )
    return sub.edits + (entry,)


def _matches(price: Price, name: str) -> bool:
    return name in (price.id, price.key) or (price.external_price_id is not None and name == price.external_price_id)


def _open_plan(sub: Subscription, plan: Plan, version: int | None, start: datetime, end: datetime | None,
               *, add_prices: Sequence[AddPrice], remove_prices: Sequence[str],
               replace_prices: Sequence[ReplacePrice], add_adjustments: Sequence[AddAdjustment],
               remove_adjustments: Sequence[str]) -> Subscription:
    plan_version = plan.version(version)
    for name in remove_prices:
        if not any(_matches(p, name) for p in plan_version.prices):
            raise SubscriptionError(f"remove_prices: price {name} is not in plan {plan.id} version {plan_version.version}")
    for rp in replace_prices:
        if not any(_matches(p, rp.replaces_price_id) for p in plan_version.prices):
            raise SubscriptionError(
                f"replace_prices: price {rp.replaces_price_id} is not in plan {plan.id} version {plan_version.version}")
    for name in remove_adjustments:
        if not any(a.id == name for a in plan_version.adjustments):
            raise SubscriptionError(f"remove_adjustments: adjustment {name} is not in plan {plan.id}")

    intervals = list(sub.intervals)
    replaced = {rp.replaces_price_id: rp.price for rp in replace_prices}

    def add_interval(price: Price, lo: datetime, hi: datetime | None, source: str, pv: int | None) -> None:
        if price.currency != sub.currency:
            raise SubscriptionError(f"price {price.id}: currency {price.currency} differs from the subscription's {sub.currency}")
        if hi is not None and hi <= lo:
            raise SubscriptionError(f"price {price.id}: end_date must be after start_date")
        intervals.append(PriceInterval(
            id=next_id(sub.id, "pi", (i.id for i in intervals)), price=price, start=lo, end=hi,
            plan_id=plan.id if pv is not None else None, plan_version=pv, source=source,
        ))

    for price in plan_version.prices:
        if any(_matches(price, name) for name in remove_prices):
            continue
        replacement = next((p for name, p in replaced.items() if _matches(price, name)), None)
        if replacement is not None:
            add_interval(replacement, start, end, "replace_prices", None)
        else:
            add_interval(price, start, end, "plan", plan_version.version)
    for ap in add_prices:
        lo = start if ap.start is None else max(_check_instant(ap.start, "add_prices.start_date"), start)
        hi = end if ap.end is None else (_check_instant(ap.end, "add_prices.end_date") if end is None else min(ap.end, end))
        add_interval(ap.price, lo, hi, "add_prices", None)

    adjustments = list(sub.adjustment_intervals)
    for adjustment in plan_version.adjustments:
        if adjustment.id in remove_adjustments:
            continue
        adjustments.append(AdjustmentInterval(
            id=next_id(sub.id, "ai", (a.id for a in adjustments)), adjustment=adjustment,
            start=start, end=end, plan_version=plan_version.version))
    for aa in add_adjustments:
        lo = start if aa.start is None else max(_check_instant(aa.start, "add_adjustments.start_date"), start)
        hi = end if aa.end is None else aa.end
        adjustments.append(AdjustmentInterval(
            id=next_id(sub.id, "ai", (a.id for a in adjustments)), adjustment=aa.adjustment,
            start=lo, end=hi, plan_version=None))

    phases = sub.phases + (PlanPhase(plan.id, plan_version.version, start, end),)
    return replace(sub, intervals=tuple(intervals), adjustment_intervals=tuple(adjustments), phases=phases)


def _close_at(sub: Subscription, instant: datetime) -> Subscription:
    """End everything at an instant: intervals starting at or after it are dropped."""
    intervals = tuple(
        i if i.end is not None and i.end <= instant else replace(i, end=instant)
        for i in sub.intervals if i.start < instant
    )
    adjustments = tuple(
        a if a.end is not None and a.end <= instant else replace(a, end=instant)
        for a in sub.adjustment_intervals if a.start < instant
    )
    phases = tuple(
        p if p.end is not None and p.end <= instant else replace(p, end=instant)
        for p in sub.phases if p.start < instant
    )
    return replace(sub, intervals=intervals, adjustment_intervals=adjustments, phases=phases)


def _effective(sub: Subscription, option: ChangeOption | str, requested: datetime | None,
               now: datetime, field_name: str) -> datetime:
    option = ChangeOption(option)
    if option is ChangeOption.IMMEDIATE:
        instant = now
    elif option is ChangeOption.REQUESTED_DATE:
        if requested is None:
            raise SubscriptionError(f"{field_name}: is required with the requested_date option")
        instant = _check_instant(requested, field_name)
    else:
        instant = billing_period(sub, max(now, sub.start)).end
    return max(instant, sub.start)


# --- edits ----------------------------------------------------------------------------------

def create_subscription(*, id: str, customer_id: str, plan: Plan, version: int | None = None,
                        start: datetime, now: datetime, end: datetime | None = None,
                        anchor: BillingAnchor | None = None,
                        add_prices: Sequence[AddPrice] = (), remove_prices: Sequence[str] = (),
                        replace_prices: Sequence[ReplacePrice] = (),
                        add_adjustments: Sequence[AddAdjustment] = (),
                        remove_adjustments: Sequence[str] = (),
                        external_marketplace: str | None = None,
                        external_marketplace_reporting_id: str | None = None,
                        metadata: Mapping[str, str] | None = None) -> Subscription:
    """Subscribe a customer to a plan version (default: the plan's default) from ``start``.

    The billing-cycle anchor defaults to the start date, so there is no partial first period.
    """
    start = _check_instant(start, "start_date")
    if end is not None and _check_instant(end, "end_date") <= start:
        raise SubscriptionError("end_date: must be after start_date")
    plan_version = plan.version(version)
    prices = [p for p in plan_version.prices] + [ap.price for ap in add_prices] + [rp.price for rp in replace_prices]
    base = Subscription(
        id=id, customer_id=customer_id, currency=plan.currency, start=start, end=end,
        anchor=anchor or BillingAnchor.from_date(start), cadence=billing_cadence(prices),
        phases=(), intervals=(), external_marketplace=external_marketplace,
        external_marketplace_reporting_id=external_marketplace_reporting_id,
        metadata=dict(metadata or {}), created_at=now,
    )
    sub = _open_plan(base, plan, version, start, end, add_prices=add_prices, remove_prices=remove_prices,
                     replace_prices=replace_prices, add_adjustments=add_adjustments,
                     remove_adjustments=remove_adjustments)
    return replace(sub, edits=log_edit(sub, "create", start, now, plan_id=plan.id, plan_version=plan_version.version))


def cancel(sub: Subscription, *, cancel_option: ChangeOption | str, now: datetime,
           cancellation_date: datetime | None = None) -> Subscription:
    """End the subscription immediately, on a requested date, or at the end of the current term."""
    instant = _effective(sub, cancel_option, cancellation_date, now, "cancellation_date")
    if sub.end is not None and instant > sub.end:
        raise SubscriptionError(f"cancellation_date: the subscription already ends at {sub.end.isoformat()}")
    closed = _close_at(sub, instant)
    return replace(closed, end=instant,
                   edits=log_edit(sub, "cancel", instant, now, cancel_option=ChangeOption(cancel_option).value))


def schedule_plan_change(sub: Subscription, plan: Plan, *, change_option: ChangeOption | str, now: datetime,
                         version: int | None = None, change_date: datetime | None = None,
                         add_prices: Sequence[AddPrice] = (), remove_prices: Sequence[str] = (),
                         replace_prices: Sequence[ReplacePrice] = (),
                         add_adjustments: Sequence[AddAdjustment] = (),
                         remove_adjustments: Sequence[str] = ()) -> Subscription:
    """Move the subscription to another plan version from the change's effective instant.

    Every interval still open at that instant ends there; the new plan's prices (with the given
    overrides) start there. Anything scheduled after it is replaced.
    """
    if plan.currency != sub.currency:
        raise SubscriptionError(f"plan_id: plan {plan.id} is in {plan.currency}, the subscription in {sub.currency}")
    instant = _effective(sub, change_option, change_date, now, "change_date")
    if sub.end is not None and instant >= sub.end:
        raise SubscriptionError(f"change_date: the subscription ends at {sub.end.isoformat()}")
    closed = _close_at(sub, instant)
    changed = _open_plan(closed, plan, version, instant, sub.end, add_prices=add_prices,
                         remove_prices=remove_prices, replace_prices=replace_prices,
                         add_adjustments=add_adjustments, remove_adjustments=remove_adjustments)
    number = plan.version(version).version
    return replace(changed, edits=log_edit(sub, "plan_change", instant, now, plan_id=plan.id, plan_version=number,
                                       change_option=ChangeOption(change_option).value))


def edit_price_intervals(sub: Subscription, *, now: datetime, add: Sequence[AddPrice] = (),
                         edit: Sequence[IntervalEdit] = (),
                         add_adjustments: Sequence[AddAdjustment] = ()) -> Subscription:
    """Add and edit price intervals (e.g. end the old rate and start a negotiated one on a date)."""
    intervals = {i.id: i for i in sub.intervals}
    for change in edit:
        current = sub.interval(change.price_interval_id)
        lo = current.start if change.start is None else _check_instant(change.start, "edit.start_date")
        hi = None if change.clear_end else (current.end if change.end is None
                                            else _check_instant(change.end, "edit.end_date"))
        if hi is not None and hi <= lo:
            raise SubscriptionError(f"edit.end_date: interval {current.id} would end before it starts")
        if lo < sub.start or (sub.end is not None and (hi is None or hi > sub.end)):
            raise SubscriptionError(f"edit: interval {current.id} must stay within the subscription")
        intervals[current.id] = replace(current, start=lo, end=hi)
    new = list(intervals.values())
    for ap in add:
        if ap.start is None:
            raise SubscriptionError("add.start_date: is required")
        lo = _check_instant(ap.start, "add.start_date")
        hi = sub.end if ap.end is None else _check_instant(ap.end, "add.end_date")
        if lo < sub.start or (hi is not None and hi <= lo) or (sub.end is not None and hi is not None and hi > sub.end):
            raise SubscriptionError(f"add: price {ap.price.id} interval must lie within the subscription")
        if ap.price.currency != sub.currency:
            raise SubscriptionError(f"add: price {ap.price.id} is in {ap.price.currency}, the subscription in {sub.currency}")
        new.append(PriceInterval(id=next_id(sub.id, "pi", (i.id for i in new)), price=ap.price,
                                 start=lo, end=hi, source="price_intervals"))
    adjustments = list(sub.adjustment_intervals)
    for aa in add_adjustments:
        if aa.start is None:
            raise SubscriptionError("add_adjustments.start_date: is required")
        adjustments.append(AdjustmentInterval(
            id=next_id(sub.id, "ai", (a.id for a in adjustments)), adjustment=aa.adjustment,
            start=_check_instant(aa.start, "add_adjustments.start_date"), end=aa.end))
    effective = min([c.start or c.end or now for c in edit] + [a.start for a in add if a.start] +
                    [a.start for a in add_adjustments if a.start] + [now])
    return replace(sub, intervals=tuple(new), adjustment_intervals=tuple(adjustments),
                   edits=log_edit(sub, "price_intervals", effective, now, added=len(add), edited=len(edit),
                              adjustments_added=len(add_adjustments)))
