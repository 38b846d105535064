"""Simulations: what past billing periods would have earned under other pricing.

A simulation takes a plan, the pricing to try (one of its versions, or a draft set of prices and
adjustments — a version that is never stored), the subscriptions to replay (chosen customers', or
every subscription on the plan) and a timeframe. For every billing period of those subscriptions
that lies inside the timeframe and has ended, it computes the invoice twice from scratch with the
engine (``invoices.compute_invoices``: the same charges, usage, rating and adjustments as any
invoice, usage read in bulk for all subscriptions at once): once on the subscription's own
timeline ("current") and once on the timeline with the plan's pricing swapped ("simulated").
Nothing is written.

The swap (``simulated_timeline``) treats the plan's prices and its adjustments alike, each by its
stable key (its lineage across versions): every interval that came from the plan (a price interval
with ``source == "plan"``, an adjustment interval of one of the plan's versions) takes the tried
version's price or adjustment of the same key, or is dropped when the tried pricing has none; a
tried price or adjustment whose key the subscription's plan version did not have is added over
each phase on the plan. Subscription-level prices (overrides, negotiated rates, price intervals)
and subscription-level adjustments stay as they are.

The answer: per customer and price key, revenue current and simulated (line amounts, after
adjustments); what adjustments did within it (``adjustments_of``); totals; and the distribution of
each customer's change in buckets of percent (``BUCKETS``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from billing_core.adjustments import Adjustment
from billing_core.errors import InvalidInput, OutOfRange
from billing_core.invoices import Invoice, compute_invoices
from billing_core.lines import LineItem, decimal_text, iso
from billing_core.money import ZERO, divide, round_money
from billing_core.periods import Period
from billing_core.plans import Plan, PlanVersion, add_version
from billing_core.pricing import Price
from billing_core.subscriptions import AdjustmentInterval, PriceInterval, Subscription, billing_period
from billing_core.usage import UsageSource

__all__ = [
    "BUCKETS", "PriceRevenue", "CustomerRevenue", "Bucket", "Failure", "Simulation", "simulated_timeline",
    "periods_within", "draft_version", "simulate", "change_percent", "adjustments_of",
]

Progress = Callable[[int, int], None]

# Buckets of a customer's change in percent: [lower, upper), None for an open end.
BUCKETS: tuple[tuple[Decimal | None, Decimal | None], ...] = tuple(
    (None if lo is None else Decimal(lo), None if hi is None else Decimal(hi))
    for lo, hi in ((None, -50), (-50, -25), (-25, -10), (-10, -1), (-1, 1), (1, 10), (10, 25), (25, 50), (50, None))
)
CHUNK = 5000  # subscriptions computed per usage read (and per progress step)
_CENT = Decimal("0.01")


def change_percent(current: Decimal, simulated: Decimal) -> Decimal | None:
    """Return the change from ``current`` to ``simulated`` in percent (two places), None from zero."""
    if current == 0:
        return None
    return divide((simulated - current) * 100, current).quantize(_CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class PriceRevenue:
    """One price (by key) of one customer: revenue current and simulated over the periods."""

    price_key: str
    name: str
    current: Decimal
    simulated: Decimal
    current_adjustments: Decimal = ZERO    # included in ``current``: what adjustments did to its lines
    simulated_adjustments: Decimal = ZERO


@dataclass(frozen=True)
class CustomerRevenue:
    customer_id: str
    subscription_ids: tuple[str, ...]
    periods: int
    prices: tuple[PriceRevenue, ...]

    @property
    def current(self) -> Decimal:
        return sum((p.current for p in self.prices), ZERO)

    @property
    def simulated(self) -> Decimal:
        return sum((p.simulated for p in self.prices), ZERO)

    @property
    def current_adjustments(self) -> Decimal:
        return sum((p.current_adjustments for p in self.prices), ZERO)

    @property
    def simulated_adjustments(self) -> Decimal:
        return sum((p.simulated_adjustments for p in self.prices), ZERO)

    @property
    def change_percent(self) -> Decimal | None:
        """Return the change in percent (two places), None when there was no current revenue."""
        return change_percent(self.current, self.simulated)


@dataclass(frozen=True)
class Bucket:
    """How many customers' change fell in ``[lower, upper)`` percent (``new``: from no revenue)."""

    label: str
    lower: Decimal | None
    upper: Decimal | None
    customers: int


@dataclass(frozen=True)
class Failure:
    """A subscription that could not be replayed, and why (usage beyond the supported range)."""

    subscription_id: str
    customer_id: str
    reason: str


@dataclass(frozen=True)
class Simulation:
    plan_id: str
    currency: str
    timeframe_start: datetime
    timeframe_end: datetime
    customers: tuple[CustomerRevenue, ...]
    failures: tuple[Failure, ...]

    @property
    def current(self) -> Decimal:
        return sum((c.current for c in self.customers), ZERO)

    @property
    def simulated(self) -> Decimal:
        return sum((c.simulated for c in self.customers), ZERO)

    @property
    def current_adjustments(self) -> Decimal:
        return sum((c.current_adjustments for c in self.customers), ZERO)

    @property
    def simulated_adjustments(self) -> Decimal:
        return sum((c.simulated_adjustments for c in self.customers), ZERO)

    @property
    def periods(self) -> int:
        return sum(c.periods for c in self.customers)

    def to_dict(self, version: int | None = None) -> dict[str, Any]:
        """Return the result as JSON-ready data: money as decimal strings, customers by id."""
        def money(value: Decimal) -> str | None:
            return decimal_text(round_money(value, self.currency))  # lines are rounded: this only spells 0 as 0.00

        return {
            "plan_id": self.plan_id, "version": version, "currency": self.currency,
            "timeframe_start": iso(self.timeframe_start), "timeframe_end": iso(self.timeframe_end),
            "subscriptions": sum(len(c.subscription_ids) for c in self.customers), "periods": self.periods,
            "current_total": money(self.current), "simulated_total": money(self.simulated),
            "change_total": money(self.simulated - self.current),
            "current_adjustments": money(self.current_adjustments),
            "simulated_adjustments": money(self.simulated_adjustments),
            "change_percent": decimal_text(change_percent(self.current, self.simulated)),
            "distribution": [
                {"label": b.label, "lower_percent": decimal_text(b.lower), "upper_percent": decimal_text(b.upper),
                 "customers": b.customers} for b in self.distribution()],
            "customers": [
                {"customer_id": c.customer_id, "subscription_ids": list(c.subscription_ids), "periods": c.periods,
                 "current_total": money(c.current), "simulated_total": money(c.simulated),
                 "change_percent": decimal_text(c.change_percent),
                 "current_adjustments": money(c.current_adjustments),
                 "simulated_adjustments": money(c.simulated_adjustments),
                 "prices": [{"price_key": p.price_key, "name": p.name, "current": money(p.current),
                             "simulated": money(p.simulated)} for p in c.prices]}
                for c in self.customers],
            "failures": [{"subscription_id": f.subscription_id, "customer_id": f.customer_id, "reason": f.reason}
                         for f in self.failures],
        }

    def distribution(self) -> tuple[Bucket, ...]:
        """Return the customers per bucket of percent change, then ``new`` and ``none`` revenue."""
        counts = [0] * len(BUCKETS)
        new = none = 0
        for customer in self.customers:
            pct = customer.change_percent
            if pct is None:
                if customer.simulated == 0:
                    none += 1
                else:
                    new += 1
                continue
            for i, (lo, hi) in enumerate(BUCKETS):
                if (lo is None or pct >= lo) and (hi is None or pct < hi):
                    counts[i] += 1
                    break
        buckets = [Bucket(_label(lo, hi), lo, hi, n) for (lo, hi), n in zip(BUCKETS, counts)]
        return tuple(buckets + [Bucket("new revenue", None, None, new), Bucket("no revenue", None, None, none)])


def _label(lo: Decimal | None, hi: Decimal | None) -> str:
    if lo is None:
        return f"< {hi}%"
    if hi is None:
        return f"≥ {lo}%"
    return f"{lo}% to {hi}%"


def _on_plan(sub: Subscription, plan_id: str) -> bool:
    return any(phase.plan_id == plan_id for phase in sub.phases)


def _plan_adjustment_key(sub: Subscription, plan: Plan, interval: AdjustmentInterval) -> str | None:
    """Return the stable key of an adjustment interval that came from the plan, None for any other.

    A plan adjustment's interval carries the version it came from; it belongs to this plan when
    that version of the plan holds the adjustment and a phase on that version covers its start.
    """
    number = interval.plan_version
    if number is None or not any(
            p.plan_id == plan.id and p.plan_version == number and p.start <= interval.start
            and (p.end is None or interval.start < p.end) for p in sub.phases):
        return None
    version = plan.version(number)
    if not any(a.id == interval.adjustment.id for a in version.adjustments):
        return None
    return version.adjustment_key(interval.adjustment.id)


def simulated_timeline(sub: Subscription, plan: Plan, tried: PlanVersion) -> Subscription:
    """Return the subscription with the plan's prices and adjustments swapped for ``tried``'s (module docstring)."""
    by_key = {p.key: p for p in tried.prices}
    intervals: list[PriceInterval] = []
    for interval in sub.intervals:
        if interval.source == "plan" and interval.plan_id == plan.id:
            new = by_key.get(interval.price.key)
            if new is not None:
                intervals.append(replace(interval, price=new, plan_version=tried.version))
        else:
            intervals.append(interval)
    tried_adjustments = tried.adjustments_by_key()
    adjustments: list[AdjustmentInterval] = []
    for adjustment in sub.adjustment_intervals:
        key = _plan_adjustment_key(sub, plan, adjustment)
        if key is None:  # subscription-level, or another plan's
            adjustments.append(adjustment)
        elif key in tried_adjustments:
            adjustments.append(replace(adjustment, adjustment=tried_adjustments[key], plan_version=tried.version))
    for n, phase in enumerate(sub.phases):
        if phase.plan_id != plan.id:
            continue
        had = plan.version(phase.plan_version)
        had_prices = {p.key for p in had.prices}
        for price in tried.prices:
            if price.key not in had_prices:
                intervals.append(PriceInterval(
                    id=f"{sub.id}_sim{n}_{price.key}", price=price, start=phase.start, end=phase.end,
                    plan_id=plan.id, plan_version=tried.version))
        had_adjustments = had.adjustments_by_key()
        for key, tried_adjustment in tried_adjustments.items():
            if key not in had_adjustments:
                adjustments.append(AdjustmentInterval(
                    id=f"{sub.id}_sim{n}_{key}", adjustment=tried_adjustment, start=phase.start, end=phase.end,
                    plan_version=tried.version))
    return replace(sub, intervals=tuple(intervals), adjustment_intervals=tuple(adjustments))


def draft_version(plan: Plan, prices: Sequence[tuple[Price, str | None]], *, now: datetime,
                  adjustments: Sequence[tuple[Adjustment, str | None]] | None = None) -> PlanVersion:
    """Return a draft version n+1 of the plan holding ``prices`` and ``adjustments`` (never stored).

    Each price may name the plan price it replaces (by id, key or external price id, in any
    version): it then continues that price's key, so the two are compared; the others are new.
    Adjustments likewise name the plan adjustment they replace (by id or key, in any version).
    ``adjustments`` None keeps the adjustments of the plan's default version as they are.
    """
    known = {name: p.key for v in plan.versions for p in v.prices
             for name in (p.id, p.key, p.external_price_id) if name is not None}
    keyed = []
    for i, (price, replaces) in enumerate(prices):
        if replaces is not None:
            if replaces not in known:
                raise InvalidInput(f"prices[{i}].replaces_price_id: {replaces!r} is not a price of plan {plan.id}",
                                   field=f"prices[{i}].replaces_price_id")
            price = replace(price, key=known[replaces])
        keyed.append(price)
    if adjustments is None:
        default = plan.version()
        chosen = list(default.adjustments)
        keys = {a.id: default.adjustment_key(a.id) for a in chosen}
    else:
        chosen, keys = _keyed_adjustments(plan, adjustments)
    # The draft's lineage is derived against the latest version; an adjustment continuing a key the
    # latest version has is its edit there, and one continuing an older key is added under that key.
    latest = plan.version(plan.latest_version).adjustments_by_key()
    replaced = {a.id: latest[keys[a.id]].id for a in chosen
                if keys[a.id] in latest and latest[keys[a.id]].id != a.id}
    drafted = add_version(plan, prices=keyed, adjustments=chosen, replaced_adjustments=replaced, now=now)
    version = drafted.version(drafted.latest_version)
    lineage = tuple(replace(e, key=keys[e.id]) if e.kind == "adjustment" and e.id in keys else e
                    for e in version.lineage)
    return replace(version, lineage=lineage)


def _keyed_adjustments(plan: Plan, adjustments: Sequence[tuple[Adjustment, str | None]],
                       ) -> tuple[list[Adjustment], dict[str, str]]:
    """Return the draft adjustments and each one's stable key (the key of the one it replaces, or its id)."""
    known = {name: v.adjustment_key(a.id) for v in plan.versions for a in v.adjustments
             for name in (a.id, v.adjustment_key(a.id))}
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for i, (adjustment, replaces) in enumerate(adjustments):
        key = adjustment.id
        if replaces is not None:
            if replaces not in known:
                raise InvalidInput(
                    f"adjustments[{i}].replaces_adjustment_id: {replaces!r} is not an adjustment of plan {plan.id}",
                    field=f"adjustments[{i}].replaces_adjustment_id")
            key = known[replaces]
        if adjustment.id in keys:
            raise InvalidInput(f"adjustments[{i}]: two draft adjustments share the id {adjustment.id}",
                               field=f"adjustments[{i}]")
        if key in taken:
            raise InvalidInput(f"adjustments[{i}].replaces_adjustment_id: another draft adjustment already "
                               f"replaces {replaces!r}", field=f"adjustments[{i}].replaces_adjustment_id")
        taken.add(key)
        keys[adjustment.id] = key
    return [a for a, _ in adjustments], keys


def periods_within(sub: Subscription, start: datetime, end: datetime) -> list[Period]:
    """Return the subscription's billing periods that lie inside ``[start, end)`` (whole periods only)."""
    found: list[Period] = []
    cursor = max(start, sub.start)
    while cursor < end and (sub.end is None or cursor < sub.end):
        period = billing_period(sub, cursor)
        if period.start >= start and period.end <= end and period.end > period.start:
            found.append(period)
        if period.end <= cursor:
            break
        cursor = period.end
    return found


def simulate(plan: Plan, tried: PlanVersion, subscriptions: Iterable[Subscription], usage: UsageSource, *,
             start: datetime, end: datetime, now: datetime, progress: Progress | None = None,
             chunk: int = CHUNK) -> Simulation:
    """Replay the subscriptions' ended periods in ``[start, end)`` under their pricing and ``tried``.

    Subscriptions never on the plan, or with no ended period in the window, are left out. ``progress(done, total)`` is called after each
    chunk of ``chunk`` subscriptions (one bulk usage read each). Nothing is written.
    """
    end = min(end, now)
    if end <= start:
        raise InvalidInput("timeframe_end: must be after timeframe_start (and not after now)", field="timeframe_end")
    if any(p.currency != plan.currency for p in tried.prices):
        raise InvalidInput(f"prices: every price must be in the plan's currency {plan.currency}", field="prices")
    subs = [s for s in subscriptions if _on_plan(s, plan.id)]
    per_customer: dict[str, dict[str, list]] = {}
    sub_ids: dict[str, set[str]] = {}
    periods: dict[str, int] = {}
    failures: list[Failure] = []
    if progress:
        progress(0, len(subs))
    for first in range(0, len(subs), chunk):
        batch = subs[first:first + chunk]
        requests: list[tuple[Subscription, Period]] = []
        owners: list[tuple[Subscription, bool]] = []
        replayed = []
        for sub in batch:
            simulated = simulated_timeline(sub, plan, tried)
            within = periods_within(sub, start, end)
            if within:  # a subscription with no ended period in the window has nothing to compare
                replayed.append(sub)
            for period in within:
                requests += [(sub, period), (simulated, period)]
                owners += [(sub, False), (sub, True)]
        invoices = compute_invoices(requests, usage, now=now)
        failed = {sub.id: inv for (sub, _), inv in zip(owners, invoices) if isinstance(inv, OutOfRange)}
        for sub in replayed:
            if sub.id in failed:
                failures.append(Failure(sub.id, sub.customer_id, str(failed[sub.id])))
            else:
                sub_ids.setdefault(sub.customer_id, set()).add(sub.id)
                per_customer.setdefault(sub.customer_id, {})
        for (sub, is_simulated), invoice in zip(owners, invoices):
            if sub.id in failed or not isinstance(invoice, Invoice):
                continue
            if not is_simulated:
                periods[sub.customer_id] = periods.get(sub.customer_id, 0) + 1
            _add(per_customer[sub.customer_id], invoice, is_simulated)
        if progress:
            progress(min(first + chunk, len(subs)), len(subs))
    customers = tuple(
        CustomerRevenue(
            customer_id=cid, subscription_ids=tuple(sorted(sub_ids[cid])), periods=periods.get(cid, 0),
            prices=tuple(PriceRevenue(key, *acc) for key, acc in sorted(per_customer[cid].items())),
        )
        for cid in sorted(per_customer)
    )
    return Simulation(plan_id=plan.id, currency=plan.currency, timeframe_start=start, timeframe_end=end,
                      customers=customers, failures=tuple(failures))


def _add(acc: dict[str, list], invoice: Invoice, is_simulated: bool) -> None:
    """Add an invoice's lines to a customer's (name, current, simulated, their adjustments) per price key."""
    for line in invoice.line_items:
        entry = acc.get(line.price.key)
        if entry is None:
            entry = acc[line.price.key] = [line.price.name, ZERO, ZERO, ZERO, ZERO]
        elif not is_simulated:
            entry[0] = line.price.name  # the current price's name, when both have the key
        entry[2 if is_simulated else 1] += line.amount
        entry[4 if is_simulated else 3] += adjustments_of(line)


def adjustments_of(line: LineItem) -> Decimal:
    """Return what adjustments did to a line (§6's steps, the price's own minimum and maximum included).

    The line's amount less its amount as rated before them, each rounded as the line is, so a
    line's rated amount plus this is its amount exactly.
    """
    rated = line.amount_unrounded - sum((a.amount for a in line.adjustments), ZERO)
    return line.amount - round_money(rated, line.currency)

