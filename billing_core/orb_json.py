"""The Orb object shapes, once: every ``/v1`` billing resource and every expanded webhook payload's
object is rendered here.

Field names and shapes follow the ``orb-billing`` client's ``types/`` (``unit_config``,
``price_intervals``, ``per_price_costs`` ...); ``webhooks/api/schemas/`` documents them field by
field. Money is always a decimal string, quantities exact JSON numbers (``ExactNumber``: written by
``money.exact_json``), instants ISO-8601 UTC. A customer has one shape wherever it appears (its own
endpoints, a subscription's ``customer``); an invoice embeds the minified customer, as Orb's does.
The API (``webhooks/api/``) answers with these; ``service_outbox`` stores them with an event for
endpoints that take expanded payloads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.backfills import Backfill
from billing_core.costs import Costs, PriceCost
from billing_core.customers import Customer
from billing_core.events import Event, properties_json
from billing_core.invoices import Invoice
from billing_core.lines import LineItem, iso
from billing_core.metrics import Metric
from billing_core.money import ExactNumber, exact_number, format_decimal, round_money
from billing_core.periods import Cadence
from billing_core.persistence.plan_migrations import Migration, SubscriptionOutcome
from billing_core.plans import Item, Plan
from billing_core.pricing import MatrixConfig, Price, config_to_dict
from billing_core.subscriptions import AdjustmentInterval, PriceInterval, Subscription, billing_period

__all__ = [
    "ADJUSTMENT_VALUE_FIELD", "adjustment_json", "backfill_json", "costs_json", "customer_json",
    "customer_minified_json", "event_json", "invoice_json", "item_json", "line_item_json", "metric_json",
    "plan_json", "plan_version_json", "price_json", "subscription_json", "migration_json",
]

# The field that carries an adjustment's value, by adjustment type.
ADJUSTMENT_VALUE_FIELD = {
    "usage_discount": "usage_discount", "amount_discount": "amount_discount",
    "percentage_discount": "percentage_discount", "minimum": "minimum_amount", "maximum": "maximum_amount",
}


def _num(value: Decimal | None) -> int | ExactNumber | None:
    """Render a quantity as an exact JSON number (quantities are not money; no float either)."""
    return exact_number(value)


def _money(value: Decimal | None) -> str | None:
    return None if value is None else format_decimal(value)


def item_json(item: Item) -> dict[str, Any]:
    return {"id": item.id, "name": item.name, "created_at": iso(item.created_at), "external_connections": [],
            "metadata": {}, "archived_at": None}


def price_json(price: Price, *, item_names: Mapping[str, str] | None = None,
               created_at: datetime | None = None, metric_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": price.id, "name": price.name, "model_type": price.model_type.value,
        price.config_key: config_to_dict(price.config),
        "cadence": price.cadence.value, "currency": price.currency, "billing_mode": price.billing_mode.value,
        "price_type": price.price_type, "created_at": iso(created_at),
        "item": {"id": price.item_id, "name": (item_names or {}).get(price.item_id, price.item_id)},
        "billable_metric": None if price.metric_id is None else {"id": price.metric_id},
        "fixed_price_quantity": _num(price.fixed_price_quantity),
        "minimum_amount": _money(price.minimum_amount), "maximum_amount": _money(price.maximum_amount),
        "minimum": None, "maximum": None, "discount": None,
        "external_price_id": price.external_price_id, "metadata": dict(price.metadata),
        "billing_cycle_configuration": {"duration": 1 if price.cadence == Cadence.ONE_TIME else
                                        {"monthly": 1, "quarterly": 3, "semi_annual": 6, "annual": 12}[price.cadence.value],
                                        "duration_unit": "month"},
        "invoicing_cycle_configuration": None, "conversion_rate": None, "conversion_rate_config": None,
        "credit_allocation": None, "plan_phase_order": None, "replaces_price_id": None,
        "dimensional_price_configuration": None, "composite_price_filters": None, "invoice_grouping_key": None,
        "price_key": price.key,
    }
    return body


def adjustment_json(adj: Adjustment) -> dict[str, Any]:
    value = adj.value
    body: dict[str, Any] = {
        "id": adj.id, "adjustment_type": adj.adjustment_type.value,
        "applies_to_price_ids": list(adj.applies_to_price_ids), "filters": [], "is_invoice_level": False,
        "plan_phase_order": None, "reason": adj.reason, "replaces_adjustment_id": None,
    }
    field = ADJUSTMENT_VALUE_FIELD[adj.adjustment_type.value]
    body[field] = _num(value) if adj.adjustment_type in (AdjustmentType.USAGE_DISCOUNT,
                                                        AdjustmentType.PERCENTAGE_DISCOUNT) else _money(value)
    if adj.adjustment_type == AdjustmentType.MINIMUM:
        body["item_id"] = ""
    return body


def plan_json(plan: Plan, version: int | None = None, item_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    v = plan.version(version)
    return {
        "id": plan.id, "name": plan.name, "description": plan.description, "currency": plan.currency,
        "invoicing_currency": plan.currency, "external_plan_id": plan.external_plan_id,
        "status": plan.status, "metadata": dict(plan.metadata), "created_at": iso(plan.created_at),
        "version": v.version, "default_version": plan.default_version,
        "prices": [price_json(p, item_names=item_names, created_at=v.created_at) for p in v.prices],
        "adjustments": [adjustment_json(a) for a in v.adjustments],
        "plan_phases": None, "base_plan": None, "base_plan_id": None, "default_invoice_memo": None,
        "discount": None, "maximum": None, "maximum_amount": None, "minimum": None, "minimum_amount": None,
        "net_terms": 0, "product": {"id": plan.id, "name": plan.name, "created_at": iso(plan.created_at)},
        "trial_config": {"trial_period": None, "trial_period_unit": "days"},
    }


def plan_version_json(plan: Plan, version: int, item_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return Orb's plan version plus ``lineage``: each price and adjustment added, edited, removed or kept."""
    v = plan.version(version)
    replaces = {e.id: e.previous_id for e in v.lineage if e.change == "edited"}
    return {"version": v.version, "created_at": iso(v.created_at), "plan_phases": None,
            "prices": [{**price_json(p, item_names=item_names, created_at=v.created_at),
                        "replaces_price_id": replaces.get(p.id)} for p in v.prices],
            "adjustments": [{**adjustment_json(a), "replaces_adjustment_id": replaces.get(a.id)}
                            for a in v.adjustments],
            "lineage": [{"kind": e.kind, "key": e.key, "change": e.change.value, "id": e.id,
                         "previous_id": e.previous_id} for e in v.lineage]}


def customer_json(customer: Customer) -> dict[str, Any]:
    """Return Orb's customer: the same object from its own endpoints and inside a subscription."""
    return {
        "id": customer.id,
        "external_customer_id": customer.external_customer_id,
        "name": customer.name,
        "email": customer.email,
        "currency": customer.currency,
        "timezone": customer.timezone,
        "metadata": dict(customer.metadata),
        "created_at": iso(customer.created_at),
        "additional_emails": [],
        "auto_collection": False,
        "auto_issuance": None,
        "balance": "0.00",
        "billing_address": None,
        "shipping_address": None,
        "email_delivery": False,
        # No tax is computed here: nobody is exempt and automatic tax is off (Orb: always a boolean).
        "exempt_from_automated_tax": False,
        "automatic_tax_enabled": False,
        "hierarchy": {"children": [], "parent": None},
        "payment_provider": None,
        "payment_provider_id": None,
        "portal_url": None,
        "tax_id": None,
        "accounting_sync_configuration": None,
        "reporting_configuration": None,
    }


def customer_minified_json(customer: Customer) -> dict[str, Any]:
    """Return Orb's minified customer (what an invoice embeds)."""
    return {"id": customer.id, "external_customer_id": customer.external_customer_id}


def _interval_json(sub: Subscription, interval: PriceInterval, current_at: datetime,
                   item_names: Mapping[str, str] | None, plan: Plan | None) -> dict[str, Any]:
    active = interval.start <= current_at and (interval.end is None or current_at < interval.end)
    period = billing_period(sub, current_at) if active else None
    # Orb's price has a creation instant: its plan version's, else (a price added to the subscription)
    # the subscription's.
    from_plan = plan is not None and interval.plan_id == plan.id and interval.plan_version is not None
    created = plan.version(interval.plan_version).created_at if from_plan else sub.created_at or sub.start
    return {
        "id": interval.id, "start_date": iso(interval.start), "end_date": iso(interval.end),
        "price": price_json(interval.price, item_names=item_names, created_at=created),
        "billing_cycle_day": sub.anchor.day,
        "current_billing_period_start_date": iso(period.start) if period else None,
        "current_billing_period_end_date": iso(period.end) if period else None,
        "fixed_fee_quantity_transitions": None, "filter": None, "usage_customer_ids": None,
        "can_defer_billing": False, "plan_id": interval.plan_id, "plan_version": interval.plan_version,
    }


def _adjustment_interval_json(sub: Subscription, ai: AdjustmentInterval) -> dict[str, Any]:
    ids = list(ai.applies_to_price_interval_ids) or [
        i.id for i in sub.intervals
        if not ai.adjustment.applies_to_price_ids
        or i.price.id in ai.adjustment.applies_to_price_ids or i.price.key in ai.adjustment.applies_to_price_ids]
    return {"id": ai.id, "adjustment": adjustment_json(ai.adjustment), "applies_to_price_interval_ids": ids,
            "start_date": iso(ai.start), "end_date": iso(ai.end)}


def subscription_json(sub: Subscription, *, customer: Customer, plan: Plan | None, at: datetime,
                      item_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    phase = sub.phase_at(at)
    period = billing_period(sub, at) if sub.status(at) == "active" else None
    return {
        "id": sub.id, "name": plan.name if plan else "", "status": sub.status(at),
        "customer": customer_json(customer),
        "plan": plan_json(plan, phase.plan_version, item_names) if plan else None,
        "plan_version": phase.plan_version,
        "start_date": iso(sub.start), "end_date": iso(sub.end), "created_at": iso(sub.created_at),
        "currency": sub.currency,
        "billing_cycle_day": sub.anchor.day,
        "billing_cycle_anchor_configuration": {"day": sub.anchor.day, "month": sub.anchor.month, "year": None},
        "current_billing_period_start_date": iso(period.start) if period else None,
        "current_billing_period_end_date": iso(period.end) if period else None,
        "price_intervals": [_interval_json(sub, i, at, item_names, plan) for i in sub.intervals],
        "adjustment_intervals": [_adjustment_interval_json(sub, a) for a in sub.adjustment_intervals],
        "discount_intervals": [], "minimum_intervals": [], "maximum_intervals": [],
        "fixed_fee_quantity_schedule": [], "metadata": dict(sub.metadata), "net_terms": 0,
        "auto_collection": None, "auto_issuance": None, "default_invoice_memo": None, "invoicing_threshold": None,
        "redeemed_coupon": None, "trial_info": {"end_date": None}, "active_plan_phase_order": None,
        "pending_subscription_change": None,
        "external_marketplace": sub.external_marketplace,
        "external_marketplace_reporting_id": sub.external_marketplace_reporting_id,
        "timeline_edits": [{"sequence": e.sequence, "kind": e.kind, "effective_at": iso(e.effective_at),
                            "recorded_at": iso(e.recorded_at), "details": dict(e.details)} for e in sub.edits],
    }


def _sub_line_json(line: LineItem, sub_line: Any) -> dict[str, Any]:
    if isinstance(line.price.config, MatrixConfig):
        return {"type": "matrix", "name": sub_line.name, "amount": _money(round_money(sub_line.amount, line.currency)),
                "quantity": _num(sub_line.quantity), "scaled_quantity": None,
                "grouping": {"key": sub_line.grouping[0][0], "value": sub_line.grouping[0][1]} if sub_line.grouping else None,
                "matrix_config": {"dimension_values": [v for _, v in sub_line.grouping]},
                "unit_amount": _money(sub_line.unit_amount)}
    return {"type": "tier", "name": sub_line.name, "amount": _money(round_money(sub_line.amount, line.currency)),
            "quantity": _num(sub_line.quantity), "grouping": None,
            "tier_config": {"first_unit": _num(sub_line.first_unit), "last_unit": _num(sub_line.last_unit),
                            "unit_amount": _money(sub_line.unit_amount)}}


def line_item_json(line: LineItem) -> dict[str, Any]:
    adjusted = line.subtotal + sum((a.amount for a in line.adjustments), Decimal(0))
    return {
        "id": line.id, "name": line.name, "kind": line.kind,
        "amount": _money(line.amount), "subtotal": _money(line.subtotal),
        "adjusted_subtotal": _money(round_money(adjusted, line.currency)),
        "amount_unrounded": _money(line.amount_unrounded),
        "quantity": _num(line.quantity), "start_date": iso(line.start), "end_date": iso(line.end),
        "price": price_json(line.price, created_at=line.start),  # in force since (no catalog read here)
        "sub_line_items": [_sub_line_json(line, s) for s in line.sub_lines],
        "adjustments": [{"id": a.adjustment_id, "adjustment_type": a.adjustment_type.value,
                         "amount": _money(a.amount), "applies_to_price_ids": [line.price.id], "filters": [],
                         "is_invoice_level": False, "reason": None, "replaces_adjustment_id": None}
                        for a in line.adjustments],
        "credits_applied": "0.00", "partially_invoiced_amount": "0.00", "tax_amounts": [], "discount": None,
        "minimum": None, "maximum": None, "filter": None, "grouping": None, "usage_customer_ids": None,
        "proration": _money(line.proration), "corrects_invoice_id": line.corrects_invoice_id,
        "corrects_line_id": line.corrects_line_id, "trace": line.trace.to_dict(),
    }


def invoice_json(invoice: Invoice, *, customer: Customer, at: datetime, upcoming: bool = False) -> dict[str, Any]:
    body = {
        "id": invoice.id, "invoice_number": invoice.invoice_number or (invoice.id or ""),
        "status": "issued" if invoice.status == "issued" else "draft",
        "currency": invoice.currency,
        "customer": customer_minified_json(customer),
        "subscription": {"id": invoice.subscription_id},
        "amount_due": _money(invoice.total), "total": _money(invoice.total), "subtotal": _money(invoice.subtotal),
        "line_items": [line_item_json(line) for line in invoice.line_items],
        "invoice_date": iso(invoice.period_end), "period_start": iso(invoice.period_start),
        "period_end": iso(invoice.period_end), "created_at": iso(invoice.issued_at or at),
        "issued_at": iso(invoice.issued_at), "due_date": None, "paid_at": None, "voided_at": None,
        "scheduled_issue_at": None, "sync_failed_at": None, "payment_failed_at": None, "payment_started_at": None,
        "eligible_to_issue_at": iso(invoice.period_end) if invoice.status != "issued" else None,
        "invoice_source": "subscription", "hidden_line_item_count": 0, "credit_notes": [],
        "customer_balance_transactions": [], "discounts": [], "discount": None, "maximum": None,
        "maximum_amount": None, "minimum": None, "minimum_amount": None, "memo": None, "metadata": {},
        "auto_collection": {"enabled": False, "next_attempt_at": None, "num_attempts": None,
                            "previously_attempted_at": None},
        "billing_address": None, "shipping_address": None, "customer_tax_id": None, "hosted_invoice_url": None,
        "invoice_pdf": None, "payment_attempts": [], "will_auto_issue": False, "is_payable_now": False,
        "total_unrounded": _money(sum((l.amount_unrounded for l in invoice.line_items), Decimal(0))),
    }
    if upcoming:
        body["target_date"] = iso(invoice.period_end)
    return body


def _per_price_json(cost: PriceCost, item_names: Mapping[str, str] | None) -> dict[str, Any]:
    return {"price_id": cost.price.id, "price": price_json(cost.price, item_names=item_names),
            "quantity": _num(cost.quantity), "subtotal": _money(cost.subtotal), "total": _money(cost.total),
            "subtotal_unrounded": _money(cost.subtotal_unrounded), "total_unrounded": _money(cost.total_unrounded),
            "price_interval_ids": list(cost.price_interval_ids)}


def costs_json(all_costs: list[Costs], item_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return Orb's costs response: one aggregated entry per timeframe (cumulative view)."""
    by_frame: dict[tuple[datetime, datetime], list[Costs]] = {}
    for c in all_costs:
        by_frame.setdefault((c.timeframe_start, c.timeframe_end), []).append(c)
    data = []
    for (start, end), group in sorted(by_frame.items()):
        per_price = [p for c in group for p in c.per_price_costs]
        data.append({
            "timeframe_start": iso(start), "timeframe_end": iso(end),
            "subtotal": _money(round_money(sum((c.subtotal for c in group), Decimal(0)), group[0].currency)),
            "total": _money(round_money(sum((c.total for c in group), Decimal(0)), group[0].currency)),
            "subtotal_unrounded": _money(sum((c.subtotal_unrounded for c in group), Decimal(0))),
            "total_unrounded": _money(sum((c.total_unrounded for c in group), Decimal(0))),
            "per_price_costs": [_per_price_json(p, item_names) for p in per_price],
        })
    return {"data": data}


def metric_json(metric: Metric, item: Item | None) -> dict[str, Any]:
    """Return Orb's billable metric (``item``: the metric's item, None when it has none)."""
    return {
        "id": metric.id,
        "name": metric.name,
        "description": metric.description,
        "item": item_json(item) if item is not None else {
            "id": None, "name": None, "created_at": None, "external_connections": [], "metadata": {},
            "archived_at": None},
        "metadata": dict(metric.metadata),
        "status": metric.status,
        "sql": metric.sql,
        "parameter_definitions": None,
        "created_at": iso(metric.created_at),
    }


def backfill_json(backfill: Backfill) -> dict[str, Any]:
    """Return Orb's backfill."""
    return {
        "id": backfill.id,
        "status": backfill.status,
        "created_at": iso(backfill.created_at),
        "timeframe_start": iso(backfill.timeframe_start),
        "timeframe_end": iso(backfill.timeframe_end),
        "customer_id": backfill.customer_id,
        "replace_existing_events": backfill.replace_existing_events,
        "events_ingested": backfill.events_ingested,
        "close_time": iso(backfill.close_time),
        "reverted_at": iso(backfill.reverted_at),
        "deprecation_filter": None,
    }


def event_json(event: Event) -> str:
    """Return Orb's event as JSON text (its properties keep their exact numbers)."""
    head = {
        "id": event.idempotency_key,
        "customer_id": event.customer_id,
        "external_customer_id": event.external_customer_id,
        "event_name": event.event_name,
        "timestamp": iso(event.timestamp),
        "deprecated": event.deprecated,
    }
    # Numbers keep their exact text, so properties are serialized by the billing core.
    return json.dumps(head)[:-1] + ',"properties":' + properties_json(event.properties) + "}"


def migration_json(migration: Migration, outcomes: list[SubscriptionOutcome] | None = None) -> dict[str, Any]:
    """Return Orb's plan migration (id, plan_id, effective_time, status) with our counts; with ``outcomes``
    (the single read) each subscription's outcome and reasons."""
    counts = migration.counts
    effective = migration.effective_time
    body: dict[str, Any] = {
        "id": migration.id, "plan_id": migration.plan_id,
        "effective_time": effective if isinstance(effective, str) else iso(effective),
        "status": migration.status, "to_version": migration.to_version,
        "from_versions": list(migration.from_versions), "overrides": migration.overrides,
        "created_at": iso(migration.created_at), "canceled_at": iso(migration.canceled_at),
        "counts": {"total": migration.total, "migrated": counts.get("migrated", 0),
                   "conflicts": counts.get("conflict", 0), "skipped": counts.get("skipped", 0),
                   "pending": counts.get("pending", 0), "reverted": counts.get("reverted", 0),
                   "to_revert": migration.to_revert, "kept": counts.get("kept", 0),
                   "canceled": counts.get("canceled", 0)},
    }
    if outcomes is not None:
        body["subscriptions"] = [{"subscription_id": o.subscription_id, "outcome": o.outcome,
                                  "effective_time": iso(o.effective_at), "reasons": list(o.reasons)}
                                 for o in outcomes]
    return body
