"""Orb-shaped JSON for the billing API: parse request bodies into domain objects, render results.

Field names and shapes follow the ``orb-billing`` client's types (``unit_config``,
``tiered_config``, ``price_intervals``, ``per_price_costs`` ...). Money is always a decimal
string; instants are ISO-8601 UTC. Errors name the offending field (400).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from flask import current_app

from billing_core import wire
from billing_core.adjustments import Adjustment, AdjustmentType
from billing_core.customers import Customer
from billing_core.errors import InvalidInput
from billing_core.invoices import Costs, Invoice, LineItem, PriceCost, iso
from billing_core.money import (
    ExactNumber, exact_number, format_decimal, parse_decimal, parse_optional_decimal, round_money,
)
from billing_core.periods import BillingAnchor, Cadence
from billing_core.plans import Item, Plan
from billing_core.pricing import BillingMode, MatrixConfig, ModelType, Price, config_to_dict, parse_config
from billing_core.subscriptions import AdjustmentInterval, PriceInterval, Subscription, billing_period

NewId = Callable[[str], str]

_PRICE_FIELDS = {
    "name", "item_id", "model_type", "cadence", "billable_metric_id", "billed_in_advance", "fixed_price_quantity",
    "currency", "external_price_id", "metadata", "minimum_amount", "maximum_amount",
    "unit_config", "tiered_config", "bulk_config", "package_config", "tiered_package_config", "matrix_config",
}
# Orb fields this core does not implement: accepted only when absent or null.
_IGNORED_WHEN_NULL = {
    "conversion_rate", "conversion_rate_config", "invoice_grouping_key", "invoicing_cycle_configuration",
    "billing_cycle_configuration", "dimensional_price_configuration", "reference_id", "license_type_id",
}


def now() -> datetime:
    """Read the clock (entry points only); tests may install ``app.extensions['billing_clock']``."""
    clock = current_app.extensions.get("billing_clock")
    return clock() if clock else datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Return a fresh opaque id with a readable prefix."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def bad(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", field=field)


def parse_instant(value: Any, field: str) -> datetime:
    """Parse an ISO-8601 instant (a date means midnight UTC; naive is UTC) in the accepted range."""
    if not isinstance(value, str):
        raise bad(field, "expected an ISO-8601 date-time")
    return wire.parse_instant(value, field)


def optional_instant(value: Any, field: str) -> datetime | None:
    return None if value is None else parse_instant(value, field)


def require_object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise bad(field, "expected an object")
    return value


def require_list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad(field, "expected a list")
    return value


def parse_metadata(value: Any, field: str = "metadata") -> dict[str, str]:
    """Read Orb metadata: an object of strings; null values are dropped."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad(field, "expected an object of strings")
    for key, item in value.items():
        if item is not None and not isinstance(item, (str, int, float, bool)):
            raise bad(f"{field}.{key}", "expected a string")
    return {str(k): str(v) for k, v in value.items() if v is not None}


def check_fields(raw: Mapping[str, Any], allowed: set[str], field: str, ignored: set[str] = frozenset()) -> None:
    """Refuse unknown fields (and unsupported Orb fields unless null), naming the first."""
    for key in sorted(raw):
        if key in allowed:
            continue
        if key in ignored and raw[key] is None:
            continue
        prefix = f"{field}." if field else ""
        raise bad(f"{prefix}{key}", "unknown or unsupported field")


def parse_price(raw: Any, *, currency: str, field: str, key: str | None = None,
                id_factory: NewId = new_id) -> Price:
    """Build a Price from Orb's new-price JSON (``model_type`` + its ``*_config``)."""
    raw = require_object(raw, field)
    check_fields(raw, _PRICE_FIELDS, field, _IGNORED_WHEN_NULL)
    model_type = raw.get("model_type")
    if model_type not in {m.value for m in ModelType}:
        raise bad(f"{field}.model_type", f"{model_type!r} is not supported "
                  f"(one of {', '.join(m.value for m in ModelType)})")
    config_key = f"{model_type}_config"
    if not isinstance(raw.get(config_key), Mapping):
        raise bad(f"{field}.{config_key}", "is required for this model_type")
    try:
        config = parse_config(model_type, raw[config_key])
    except InvalidInput as exc:
        raise bad(f"{field}.{exc.field or config_key}", str(exc).split(": ", 1)[-1]) from None
    for other in _PRICE_FIELDS:
        if other.endswith("_config") and other != config_key and raw.get(other) is not None:
            raise bad(f"{field}.{other}", f"does not belong to model_type {model_type}")
    try:
        cadence = Cadence(raw.get("cadence"))
    except ValueError:
        raise bad(f"{field}.cadence", f"{raw.get('cadence')!r} is not supported "
                  f"(one of {', '.join(c.value for c in Cadence)})") from None
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise bad(f"{field}.name", "is required")
    item_id = raw.get("item_id")
    if not isinstance(item_id, str) or not item_id:
        raise bad(f"{field}.item_id", "is required")
    price_currency = raw.get("currency") or currency
    if price_currency != currency:
        raise bad(f"{field}.currency", f"must be {currency}")
    metric_id = raw.get("billable_metric_id")
    in_advance = bool(raw.get("billed_in_advance"))
    if in_advance and metric_id:
        raise bad(f"{field}.billed_in_advance", "usage prices are billed in arrears")
    if model_type == ModelType.MATRIX and not metric_id:
        raise bad(f"{field}.billable_metric_id", "a matrix price needs a metric")
    quantity = parse_optional_decimal(raw.get("fixed_price_quantity"), f"{field}.fixed_price_quantity")
    if quantity is not None and metric_id:
        raise bad(f"{field}.fixed_price_quantity", "applies to fixed prices only (no billable_metric_id)")
    metadata = parse_metadata(raw.get("metadata"), f"{field}.metadata")
    price_id = id_factory("price")
    return Price(
        id=price_id, key=key or price_id, name=name.strip(), item_id=item_id, model_type=ModelType(model_type),
        config=config, cadence=cadence, currency=currency,
        billing_mode=BillingMode.IN_ADVANCE if in_advance else BillingMode.IN_ARREAR, metric_id=metric_id,
        fixed_price_quantity=(quantity if quantity is not None else (None if metric_id else Decimal(1))),
        minimum_amount=parse_optional_decimal(raw.get("minimum_amount"), f"{field}.minimum_amount"),
        maximum_amount=parse_optional_decimal(raw.get("maximum_amount"), f"{field}.maximum_amount"),
        external_price_id=raw.get("external_price_id"),
        metadata=metadata,
    )


_ADJ_VALUE = {
    "usage_discount": "usage_discount", "amount_discount": "amount_discount",
    "percentage_discount": "percentage_discount", "minimum": "minimum_amount", "maximum": "maximum_amount",
}
_ADJ_FIELDS = {"adjustment_type", "applies_to_price_ids", "applies_to_all", "is_invoice_level", "item_id",
               "currency", "reason", *_ADJ_VALUE.values()}


def parse_adjustment(raw: Any, field: str, id_factory: NewId = new_id) -> Adjustment:
    """Build an Adjustment from Orb's new-adjustment JSON."""
    raw = require_object(raw, field)
    kind = raw.get("adjustment_type")
    if kind not in _ADJ_VALUE:
        raise bad(f"{field}.adjustment_type", f"{kind!r} is not supported (one of {', '.join(_ADJ_VALUE)})")
    check_fields(raw, _ADJ_FIELDS, field, {"filters", "applies_to_item_ids", "price_type"})
    value_field = _ADJ_VALUE[kind]
    if raw.get(value_field) is None:
        raise bad(f"{field}.{value_field}", "is required")
    names = tuple(str(n) for n in require_list(raw.get("applies_to_price_ids"), f"{field}.applies_to_price_ids"))
    try:
        return Adjustment(id=id_factory("adj"), adjustment_type=AdjustmentType(kind),
                          value=parse_decimal(raw[value_field], f"{field}.{value_field}"),
                          applies_to_price_ids=names, reason=raw.get("reason"))
    except InvalidInput as exc:
        raise bad(f"{field}.{value_field}", str(exc).split(": ", 1)[-1]) from None


def parse_anchor(raw: Any, field: str = "billing_cycle_anchor_configuration") -> BillingAnchor | None:
    if raw is None:
        return None
    raw = require_object(raw, field)
    check_fields(raw, {"day", "month", "year"}, field)
    try:
        return BillingAnchor(day=int(raw["day"]), month=int(raw.get("month") or 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"{field}.day", str(exc) or "is required") from None


# --- rendering ----------------------------------------------------------------------------------

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
    field = _ADJ_VALUE[adj.adjustment_type.value]
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
    v = plan.version(version)
    return {"version": v.version, "created_at": iso(v.created_at), "plan_phases": None,
            "prices": [price_json(p, item_names=item_names, created_at=v.created_at) for p in v.prices],
            "adjustments": [adjustment_json(a) for a in v.adjustments]}


def customer_json(customer: Customer) -> dict[str, Any]:
    return {
        "id": customer.id, "external_customer_id": customer.external_customer_id, "name": customer.name,
        "email": customer.email, "currency": customer.currency, "timezone": customer.timezone,
        "metadata": dict(customer.metadata), "created_at": iso(customer.created_at), "balance": "0.00",
        "additional_emails": [], "auto_collection": False, "auto_issuance": None, "billing_address": None,
        "shipping_address": None, "email_delivery": False, "exempt_from_automated_tax": None,
        "hierarchy": {"children": [], "parent": None}, "payment_provider": None, "payment_provider_id": None,
        "portal_url": None, "tax_id": None, "accounting_sync_configuration": None,
        "reporting_configuration": None, "automatic_tax_enabled": None,
    }


def _interval_json(sub: Subscription, interval: PriceInterval, current_at: datetime,
                   item_names: Mapping[str, str] | None) -> dict[str, Any]:
    active = interval.start <= current_at and (interval.end is None or current_at < interval.end)
    period = billing_period(sub, current_at) if active else None
    return {
        "id": interval.id, "start_date": iso(interval.start), "end_date": iso(interval.end),
        "price": price_json(interval.price, item_names=item_names),
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
        "price_intervals": [_interval_json(sub, i, at, item_names) for i in sub.intervals],
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
        "price": price_json(line.price),
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
        "customer": {"id": customer.id, "external_customer_id": customer.external_customer_id},
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


# --- view helpers ---------------------------------------------------------------------------------

def engine() -> Any:
    """Return the process's database engine."""
    return current_app.extensions["marketsync"].engine


def cursor_id() -> str | None:
    """Return the row id the ``cursor`` query parameter points after."""
    from flask import request

    from webhooks.api.common import decode_cursor

    value = decode_cursor(request.args.get("cursor"))
    return None if value is None else str(value.get("id"))


def page_json(data: list[Any], next_id: str | None) -> dict[str, Any]:
    """Return Orb's list envelope with an opaque cursor."""
    from webhooks.api.common import encode_cursor, paginated

    return paginated(data, has_more=next_id is not None,
                     next_cursor=encode_cursor({"id": next_id}) if next_id else None)
