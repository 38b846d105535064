"""Use cases for items, plans, subscriptions, invoices and costs.

Each function is one unit of work on the caller's session; it takes the time (``now``) and an
id factory from the entry point, reads through the repositories, calls the pure core and
stores the result. The usage source is passed in (SQL in production, in-memory in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.orm import Session

from billing_core import service_migrations
from billing_core.adjustments import Adjustment
from billing_core.bulk import without_gc
from billing_core.costs import Costs, MetricDailyUsage, costs, costs_bulk, usage_by_day
from billing_core.errors import Conflict, InvalidInput, NotFound
from billing_core.invoices import Invoice, InvoiceNotFound, compute_invoice, issue_invoice
from billing_core.periods import BillingAnchor, Period
from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.plans import Item, Plan, add_version, create_plan, set_default_version
from billing_core.pricing import Price
from billing_core.service_outbox import emit_invoice_issued, emit_subscription
from billing_core.simulations import Progress, Simulation, draft_version, simulate
from billing_core.subscriptions import (
    AddAdjustment, AddPrice, ChangeOption, IntervalEdit, ReplacePrice, Subscription, billing_period, cancel,
    create_subscription, edit_price_intervals, schedule_plan_change,
)
from billing_core.usage import UsageSource

__all__ = [
    "NewId", "PlanChanges",
    "create_item", "create_plan_with_prices", "create_plan_version", "set_plan_default_version",
    "subscribe", "cancel_subscription", "change_plan", "edit_intervals",
    "subscription_costs", "customer_costs", "subscription_usage", "upcoming", "invoice_id_for",
    "draft_or_issued_invoice", "issue", "period_invoices", "all_costs", "simulation",
]

NewId = Callable[[str], str]


@dataclass(frozen=True)
class PlanChanges:
    """Overrides applied when subscribing or changing plans (no custom plan needed)."""

    add_prices: Sequence[AddPrice] = ()
    remove_prices: Sequence[str] = ()
    replace_prices: Sequence[ReplacePrice] = ()
    add_adjustments: Sequence[AddAdjustment] = ()
    remove_adjustments: Sequence[str] = ()


# --- catalog ------------------------------------------------------------------------------------

def create_item(session: Session, *, name: str, now: datetime, new_id: NewId) -> Item:
    """Create an item."""
    if not name or not name.strip():
        raise InvalidInput("name: must not be empty", field="name")
    return SqlCatalog(session).add_item(Item(id=new_id("item"), name=name.strip(), created_at=now))


def _check_items_and_prices(catalog: SqlCatalog, prices: Sequence[Price]) -> None:
    for price in prices:
        catalog.get_item(price.item_id)


def create_plan_with_prices(session: Session, *, plan_id: str, name: str, currency: str,
                            prices: Sequence[Price], adjustments: Sequence[Adjustment], now: datetime,
                            external_plan_id: str | None = None, description: str = "",
                            metadata: dict[str, str] | None = None) -> Plan:
    """Create a plan with its first version."""
    catalog = SqlCatalog(session)
    _check_items_and_prices(catalog, prices)
    plan = create_plan(id=plan_id, name=name, currency=currency, prices=prices, adjustments=adjustments,
                       now=now, external_plan_id=external_plan_id, description=description, metadata=metadata)
    return catalog.save_plan(plan)


def create_plan_version(session: Session, plan: Plan, *, version: int, prices: Sequence[Price],
                        adjustments: Sequence[Adjustment], now: datetime, set_as_default: bool,
                        replaced_adjustments: dict[str, str] | None = None) -> Plan:
    """Add version n+1 to a plan (the requested number must be the next one)."""
    if version != plan.latest_version + 1:
        raise Conflict(f"version: the next version of plan {plan.id} is {plan.latest_version + 1}", field="version")
    catalog = SqlCatalog(session)
    _check_items_and_prices(catalog, prices)
    return catalog.save_plan(add_version(plan, prices=prices, adjustments=adjustments, now=now,
                                         make_default=set_as_default, replaced_adjustments=replaced_adjustments))


def set_plan_default_version(session: Session, plan: Plan, version: int) -> Plan:
    """Make another version the default for new subscriptions."""
    return SqlCatalog(session).save_plan(set_default_version(plan, version))


# --- subscriptions --------------------------------------------------------------------------------

def subscribe(session: Session, *, customer_id: str, currency: str | None, plan: Plan, version: int | None,
              start: datetime, end: datetime | None, anchor: BillingAnchor | None, changes: PlanChanges,
              now: datetime, new_id: NewId, external_marketplace: str | None = None,
              external_marketplace_reporting_id: str | None = None,
              metadata: dict[str, str] | None = None) -> Subscription:
    """Create and store a subscription on a plan version."""
    if currency is not None and currency != plan.currency:
        raise InvalidInput(f"currency: the customer bills in {currency}, plan {plan.id} in {plan.currency}",
                           field="currency")
    sub = create_subscription(
        id=new_id("sub"), customer_id=customer_id, plan=plan, version=version, start=start, now=now, end=end,
        anchor=anchor, add_prices=changes.add_prices, remove_prices=changes.remove_prices,
        replace_prices=changes.replace_prices, add_adjustments=changes.add_adjustments,
        remove_adjustments=changes.remove_adjustments, external_marketplace=external_marketplace,
        external_marketplace_reporting_id=external_marketplace_reporting_id, metadata=metadata)
    stored = SqlSubscriptions(session).add(sub)
    emit_subscription(session, "subscription.created", stored, now=now)
    return stored


def cancel_subscription(session: Session, subscription_id: str, *, option: ChangeOption | str,
                        cancellation_date: datetime | None, now: datetime) -> Subscription:
    """Cancel a subscription (a timeline edit)."""
    repo = SqlSubscriptions(session)
    sub = repo.get(subscription_id, for_update=True)  # concurrent edits queue, none is refused
    canceled = repo.save(cancel(sub, cancel_option=option, cancellation_date=cancellation_date, now=now),
                         expected_revision=len(sub.edits))
    _edited(session, sub, canceled, now=now)
    return canceled


def change_plan(session: Session, subscription_id: str, plan: Plan, *, version: int | None,
                option: ChangeOption | str, change_date: datetime | None, changes: PlanChanges,
                now: datetime) -> Subscription:
    """Schedule a plan change (a timeline edit)."""
    repo = SqlSubscriptions(session)
    sub = repo.get(subscription_id, for_update=True)  # concurrent edits queue, none is refused
    changed = schedule_plan_change(
        sub, plan, change_option=option, now=now, version=version, change_date=change_date,
        add_prices=changes.add_prices, remove_prices=changes.remove_prices, replace_prices=changes.replace_prices,
        add_adjustments=changes.add_adjustments, remove_adjustments=changes.remove_adjustments)
    saved = repo.save(changed, expected_revision=len(sub.edits))
    _edited(session, sub, saved, now=now)
    return saved


def edit_intervals(session: Session, subscription_id: str, *, add: Sequence[AddPrice],
                   edit: Sequence[IntervalEdit], add_adjustments: Sequence[AddAdjustment],
                   now: datetime) -> Subscription:
    """Add and edit price intervals (a timeline edit)."""
    repo = SqlSubscriptions(session)
    sub = repo.get(subscription_id, for_update=True)  # concurrent edits queue, none is refused
    changed = edit_price_intervals(sub, now=now, add=add, edit=edit, add_adjustments=add_adjustments)
    saved = repo.save(changed, expected_revision=len(sub.edits))
    _edited(session, sub, saved, now=now)
    return saved


def _edited(session: Session, before: Subscription, after: Subscription, *, now: datetime) -> None:
    """Emit ``subscription.edited`` for a timeline edit (and ``subscription.ended`` when it ended it now)."""
    # Orb's previous_attributes name subscription fields a timeline edit never changes: none here.
    emit_subscription(session, "subscription.edited", after, now=now, properties={"previous_attributes": {}})
    if before.status(now) != "ended" and after.status(now) == "ended":
        emit_subscription(session, "subscription.ended", after, now=now)


# --- costs, usage, invoices --------------------------------------------------------------------------

def _timeframe(sub: Subscription, start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    lo = start or billing_period(sub, now).start
    hi = end or now
    if hi <= lo:
        raise InvalidInput("timeframe_end: must be after timeframe_start", field="timeframe_end")
    return lo, hi


def subscription_costs(sub: Subscription, usage: UsageSource, *, timeframe_start: datetime | None,
                       timeframe_end: datetime | None, now: datetime) -> Costs:
    """Return cumulative costs of a subscription (default: current period start .. now)."""
    lo, hi = _timeframe(sub, timeframe_start, timeframe_end, now)
    return costs(sub, lo, hi, usage)


def customer_costs(session: Session, customer_id: str, usage: UsageSource, *, timeframe_start: datetime | None,
                   timeframe_end: datetime | None, now: datetime) -> list[Costs]:
    """Return costs of every subscription of a customer over the timeframe."""
    subs = SqlSubscriptions(session).for_customer(customer_id)
    requests = []
    for sub in subs:
        lo, hi = _timeframe(sub, timeframe_start, timeframe_end, now)
        requests.append((sub, lo, hi))
    return costs_bulk(requests, usage)


@without_gc
def all_costs(session: Session, usage: UsageSource, *, now: datetime) -> list[Costs]:
    """Return every active subscription's costs from its current period start to now (bulk)."""
    subs = SqlSubscriptions(session).all_active(now)
    return costs_bulk([(s, billing_period(s, now).start, now) for s in subs], usage)


def subscription_usage(sub: Subscription, usage: UsageSource, *, timeframe_start: datetime | None,
                       timeframe_end: datetime | None, now: datetime,
                       metric_id: str | None = None) -> list[MetricDailyUsage]:
    """Return usage per metric per day (default: current period start .. now)."""
    lo, hi = _timeframe(sub, timeframe_start, timeframe_end, now)
    result = usage_by_day(sub, lo, hi, usage)
    return [m for m in result if metric_id is None or m.metric_id == metric_id]


def invoice_id_for(sub: Subscription, period: Period) -> str:
    """Return the deterministic id of a subscription's invoice for a period."""
    return f"inv_{period.start.strftime('%Y%m%d')}_{sub.id}"


def _parse_invoice_id(invoice_id: str) -> tuple[str, str] | None:
    parts = invoice_id.split("_", 2)
    if len(parts) != 3 or parts[0] != "inv" or len(parts[1]) != 8 or not parts[1].isdigit():
        return None
    return parts[1], parts[2]


def upcoming(session: Session, sub: Subscription, usage: UsageSource, *, now: datetime) -> Invoice:
    """Return the invoice of the current period, with corrections of issued invoices."""
    period = billing_period(sub, now)
    issued = SqlSubscriptions(session).issued_for(sub.id)
    invoice = compute_invoice(sub, period, usage, now=now, issued=issued)
    return replace(invoice, id=invoice_id_for(sub, period))


def period_invoices(session: Session, sub: Subscription, usage: UsageSource, *, now: datetime) -> list[Invoice]:
    """Return a subscription's invoices for every period started by now: issued snapshots or drafts."""
    repo = SqlSubscriptions(session)
    issued = repo.issued_for(sub.id)
    by_start = {inv.period_start: inv for inv in issued}
    result: list[Invoice] = []
    cursor = sub.start
    while cursor <= now and (sub.end is None or cursor < sub.end):
        period = billing_period(sub, cursor)
        if period.start in by_start:
            result.append(by_start[period.start])
        else:
            draft = compute_invoice(sub, period, usage, now=now, issued=[i for i in issued if i.period_end <= period.start])
            result.append(replace(draft, id=invoice_id_for(sub, period)))
        if period.end <= cursor:
            break
        cursor = period.end
    return result


def draft_or_issued_invoice(session: Session, invoice_id: str, usage: UsageSource, *, now: datetime) -> Invoice:
    """Return an issued invoice's snapshot, or compute the draft the id names."""
    repo = SqlSubscriptions(session)
    try:
        return repo.get_invoice(invoice_id)
    except NotFound:
        pass
    parsed = _parse_invoice_id(invoice_id)
    if parsed is None:
        raise InvoiceNotFound(f"invoice {invoice_id} not found", field="invoice_id")
    day, subscription_id = parsed
    try:
        sub = repo.get(subscription_id)
    except NotFound:
        raise InvoiceNotFound(f"invoice {invoice_id} not found", field="invoice_id") from None
    for inv in period_invoices(session, sub, usage, now=now):
        if inv.id == invoice_id or inv.period_start.strftime("%Y%m%d") == day:
            return inv
    raise InvoiceNotFound(f"invoice {invoice_id} not found", field="invoice_id")


def issue(session: Session, invoice_id: str, usage: UsageSource, *, now: datetime) -> Invoice:
    """Issue a draft: store its immutable snapshot (issuing twice returns the first snapshot).

    Any revert a canceled plan migration still owes the subscription runs first and any plan
    migration still pending for it is applied, so an invoice is never issued at the prices a
    canceled migration set or a running one is about to replace.
    """
    parsed = _parse_invoice_id(invoice_id)
    if parsed is not None:
        # Pending migrations first: each locks its migration, then the subscription (the order chunks
        # lock in), and reverts what a canceled one still owes before it migrates; then whatever is still owed.
        service_migrations.apply_pending(session, parsed[1], now=now)
        service_migrations.revert_owed(session, [parsed[1]], now=now)
    invoice = draft_or_issued_invoice(session, invoice_id, usage, now=now)
    if invoice.status == "issued":
        return invoice
    if now < invoice.period_start:
        raise Conflict(f"invoice {invoice_id} is for a period that has not started", field="invoice_id")
    issued = SqlSubscriptions(session).add_invoice(issue_invoice(invoice, id=invoice_id, now=now))
    emit_invoice_issued(session, issued, now=now)
    return issued


# --- simulations -------------------------------------------------------------------------------------

@without_gc
def simulation(session: Session, usage: UsageSource, *, plan_id: str, version: int | None,
               draft: Sequence[tuple[Price, str | None]] | None, customer_ids: Sequence[str] | None,
               start: datetime, end: datetime, now: datetime, progress: Progress | None = None,
               draft_adjustments: Sequence[tuple[Adjustment, str | None]] | None = None) -> Simulation:
    """Replay past periods of a plan's subscriptions (or some customers') under a version or draft pricing.

    Exactly one of ``version`` and ``draft`` (prices with the plan price each replaces, if any);
    ``draft_adjustments`` (each with the plan adjustment it replaces, if any) only with ``draft``,
    None keeping the default version's adjustments. Reads only: nothing is written.
    """
    if (version is None) == (draft is None):
        raise InvalidInput("version: give exactly one of version and prices", field="version")
    if draft is None and draft_adjustments is not None:
        raise InvalidInput("adjustments: draft adjustments go with draft prices, not a version", field="adjustments")
    plan = SqlCatalog(session).get_plan(plan_id)
    if version is not None:
        if version not in {v.version for v in plan.versions}:
            raise InvalidInput(f"version: plan {plan_id} has no version {version}", field="version")
        tried = plan.version(version)
    else:
        tried = draft_version(plan, draft or (), adjustments=draft_adjustments, now=now)
    subs = SqlSubscriptions(session).overlapping(start, end, customer_ids=customer_ids)
    return simulate(plan, tried, subs, usage, start=start, end=end, now=now, progress=progress)
