"""``/v1/subscriptions`` and customer costs: create, fetch, list, cancel, plan change, price
intervals, costs and usage. Every change is a timeline edit with an effective instant."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Mapping

from flask import request
from sqlalchemy.orm import Session

from billing_core import (
    AddAdjustment, AddPrice, Customer, IntervalEdit, NotFound, Plan, Price, ReplacePrice,
    SqlCatalog, SqlCustomerRepository, SqlMetricRepository, SqlSubscriptions, Subscription, billing_period,
    exact_number, parse_optional_decimal, service_plans, usage_source,
)
from billing_core.orb_json import costs_json, subscription_json
from webhooks.api.bodies import (
    check_fields, optional_instant, parse_adjustment, parse_anchor, parse_instant, parse_metadata, parse_price,
    require_list, require_object,
)
from webhooks.api.common import (
    api_blueprint, bad, cursor_id, engine, json_body, new_id, now, page_json, page_limit,
)
from webhooks.api.openapi import documented
from webhooks.api.schemas import (
    Costs, Page, PlanChange, PriceIntervalsEdit, Subscription as SubscriptionShape, SubscriptionCancel,
    SubscriptionCreate, SubscriptionQuery, TimeframeQuery, Usage, UsageQuery,
)
from worker.db import session_scope

bp = api_blueprint("billing_subscriptions", __name__)

_CREATE_FIELDS = {
    "customer_id", "external_customer_id", "plan_id", "external_plan_id", "plan_version_number", "start_date",
    "end_date", "billing_cycle_anchor_configuration", "add_prices", "remove_prices", "replace_prices",
    "add_adjustments", "remove_adjustments", "external_marketplace", "external_marketplace_reporting_id",
    "metadata", "currency", "net_terms", "auto_collection", "default_invoice_memo", "name",
    "align_billing_with_subscription_start_date",
}
_IGNORED = {"aws_region", "coupon_redemption_code", "credits_overage_rate", "invoicing_threshold",
            "per_credit_overage_amount", "price_overrides", "replace_adjustments", "trial_duration_days",
            "usage_customer_ids", "initial_phase_order", "filter", "auto_issuance", "customer_tax_id"}


# --- lookups --------------------------------------------------------------------------------------

def _customer(session: Session, body: Mapping[str, Any]) -> Customer:
    repo = SqlCustomerRepository(session)
    if body.get("customer_id"):
        return repo.get(str(body["customer_id"]))
    if body.get("external_customer_id"):
        return repo.get_by_external_id(str(body["external_customer_id"]))
    raise bad("customer_id", "customer_id or external_customer_id is required")


def _plan(session: Session, body: Mapping[str, Any]) -> Plan:
    catalog = SqlCatalog(session)
    if body.get("plan_id"):
        return catalog.get_plan(str(body["plan_id"]))
    if body.get("external_plan_id"):
        return catalog.get_plan_by_external_id(str(body["external_plan_id"]))
    raise bad("plan_id", "plan_id or external_plan_id is required")


def _item_names(session: Session) -> dict[str, str]:
    return SqlCatalog(session).item_names()


def _render(session: Session, sub: Subscription, at: datetime, mutated: bool = False) -> dict[str, Any]:
    customer = SqlCustomerRepository(session).get(sub.customer_id)
    phase = sub.phase_at(at)
    plan = SqlCatalog(session).get_plan(phase.plan_id)
    body = subscription_json(sub, customer=customer, plan=plan, at=at, item_names=_item_names(session))
    if mutated:
        body["changed_resources"] = None
    return body


# --- body parsing ----------------------------------------------------------------------------------

def _price_with_limits(price: Price, raw: Mapping[str, Any], field: str) -> Price:
    minimum = parse_optional_decimal(raw.get("minimum_amount"), f"{field}.minimum_amount")
    maximum = parse_optional_decimal(raw.get("maximum_amount"), f"{field}.maximum_amount")
    quantity = parse_optional_decimal(raw.get("fixed_price_quantity"), f"{field}.fixed_price_quantity")
    if minimum is None and maximum is None and quantity is None:
        return price
    return replace(price, id=new_id("price"),
                   minimum_amount=minimum if minimum is not None else price.minimum_amount,
                   maximum_amount=maximum if maximum is not None else price.maximum_amount,
                   fixed_price_quantity=quantity if quantity is not None else price.fixed_price_quantity)


def _resolve_price(session: Session, raw: Mapping[str, Any], currency: str, field: str,
                   key: str | None = None) -> Price:
    if raw.get("price") is not None:
        price = parse_price(raw["price"], currency=currency, field=f"{field}.price", key=key)
        SqlCatalog(session).add_price(price, plan_id=None, now=now())
    elif raw.get("price_id") or raw.get("external_price_id"):
        price = SqlCatalog(session).get_price(str(raw.get("price_id") or raw.get("external_price_id")))
        if price.currency != currency:
            raise bad(f"{field}.price_id", f"price {price.id} is in {price.currency}, not {currency}")
        if key is not None and price.key != key:
            # Another lineage is another price: a price id always names one definition.
            price = replace(price, id=new_id("price"), key=key)
    else:
        raise bad(f"{field}.price", "price or price_id is required")
    return _price_with_limits(price, raw, field)


def _changes(session: Session, body: Mapping[str, Any], plan: Plan, version: int | None) -> service_plans.PlanChanges:
    plan_version = plan.version(version)
    add = []
    for i, raw in enumerate(require_list(body.get("add_prices"), "add_prices")):
        raw = require_object(raw, f"add_prices[{i}]")
        check_fields(raw, {"price", "price_id", "external_price_id", "start_date", "end_date", "minimum_amount",
                           "maximum_amount", "fixed_price_quantity"}, f"add_prices[{i}]",
                     {"allocation_price", "discounts", "plan_phase_order", "metric_parameter_overrides"})
        add.append(AddPrice(_resolve_price(session, raw, plan.currency, f"add_prices[{i}]"),
                            start=optional_instant(raw.get("start_date"), f"add_prices[{i}].start_date"),
                            end=optional_instant(raw.get("end_date"), f"add_prices[{i}].end_date")))
    remove = []
    for i, raw in enumerate(require_list(body.get("remove_prices"), "remove_prices")):
        raw = require_object(raw, f"remove_prices[{i}]")
        check_fields(raw, {"price_id", "external_price_id"}, f"remove_prices[{i}]")
        name = raw.get("price_id") or raw.get("external_price_id")
        if not name:
            raise bad(f"remove_prices[{i}].price_id", "price_id or external_price_id is required")
        remove.append(str(name))
    replace_prices = []
    for i, raw in enumerate(require_list(body.get("replace_prices"), "replace_prices")):
        raw = require_object(raw, f"replace_prices[{i}]")
        check_fields(raw, {"replaces_price_id", "price", "price_id", "external_price_id", "minimum_amount",
                           "maximum_amount", "fixed_price_quantity"}, f"replace_prices[{i}]",
                     {"allocation_price", "discounts", "metric_parameter_overrides"})
        old = next((p for p in plan_version.prices if raw.get("replaces_price_id") in (p.id, p.key)), None)
        if old is None:
            raise bad(f"replace_prices[{i}].replaces_price_id",
                      f"{raw.get('replaces_price_id')} is not a price of plan {plan.id} version {plan_version.version}")
        replace_prices.append(ReplacePrice(old.id, _resolve_price(session, raw, plan.currency,
                                                                  f"replace_prices[{i}]", key=old.key)))
    add_adj = _add_adjustments(body.get("add_adjustments"), "add_adjustments")
    remove_adj = []
    for i, raw in enumerate(require_list(body.get("remove_adjustments"), "remove_adjustments")):
        raw = require_object(raw, f"remove_adjustments[{i}]")
        check_fields(raw, {"adjustment_id"}, f"remove_adjustments[{i}]")
        remove_adj.append(str(raw.get("adjustment_id")))
    return service_plans.PlanChanges(add_prices=add, remove_prices=remove, replace_prices=replace_prices,
                                     add_adjustments=add_adj, remove_adjustments=remove_adj)


def _add_adjustments(value: Any, field: str) -> list[AddAdjustment]:
    result = []
    for i, raw in enumerate(require_list(value, field)):
        raw = require_object(raw, f"{field}[{i}]")
        check_fields(raw, {"adjustment", "start_date", "end_date"}, f"{field}[{i}]", {"plan_phase_order"})
        result.append(AddAdjustment(parse_adjustment(raw.get("adjustment"), f"{field}[{i}].adjustment"),
                                    start=optional_instant(raw.get("start_date"), f"{field}[{i}].start_date"),
                                    end=optional_instant(raw.get("end_date"), f"{field}[{i}].end_date")))
    return result


def _version(body: Mapping[str, Any]) -> int | None:
    value = body.get("plan_version_number")
    if value is not None and not isinstance(value, int):
        raise bad("plan_version_number", "must be an integer")
    return value


# --- routes ---------------------------------------------------------------------------------------

@bp.post("/subscriptions")
@documented(body=SubscriptionCreate, response=SubscriptionShape, status=201, links={
    f"billing_subscriptions.{endpoint}": {"subscription_id": "$response.body#/id"}
    for endpoint in ("fetch_subscription", "cancel_subscription", "subscription_costs", "subscription_usage")})
def create_subscription():
    """Subscribe a customer to a plan (default or named version) with overrides."""
    body = require_object(json_body(), "body")
    check_fields(body, _CREATE_FIELDS, "", _IGNORED)
    at = now()
    marketplace = body.get("external_marketplace")
    if marketplace is not None and marketplace not in ("aws", "azure", "google"):
        raise bad("external_marketplace", "must be one of aws, azure, google")
    with session_scope(engine()) as session:
        customer = _customer(session, body)
        plan = _plan(session, body)
        version = _version(body)
        plan.version(version)
        start = optional_instant(body.get("start_date"), "start_date") or at
        anchor = parse_anchor(body.get("billing_cycle_anchor_configuration"))
        currency = body.get("currency") or customer.currency
        sub = service_plans.subscribe(
            session, customer_id=customer.id, currency=currency, plan=plan, version=version, start=start,
            end=optional_instant(body.get("end_date"), "end_date"), anchor=anchor,
            changes=_changes(session, body, plan, version), now=at, new_id=new_id,
            external_marketplace=marketplace,
            external_marketplace_reporting_id=body.get("external_marketplace_reporting_id"),
            metadata=parse_metadata(body.get("metadata")))
        return _render(session, sub, at), 201


@bp.get("/subscriptions/<subscription_id>")
@documented(response=SubscriptionShape)
def fetch_subscription(subscription_id: str):
    """Fetch a subscription with its price intervals."""
    with session_scope(engine()) as session:
        return _render(session, SqlSubscriptions(session).get(subscription_id), now())


@bp.get("/subscriptions")
@documented(query=SubscriptionQuery, response=Page[SubscriptionShape])
def list_subscriptions():
    """List subscriptions, newest first (filter by customer_id or external_customer_id)."""
    limit = page_limit()
    at = now()
    with session_scope(engine()) as session:
        customer_id = request.args.get("customer_id")
        if request.args.get("external_customer_id"):
            customer_id = SqlCustomerRepository(session).get_by_external_id(request.args["external_customer_id"]).id
        subs, nxt = SqlSubscriptions(session).list(limit=limit, cursor=cursor_id(), customer_id=customer_id)
        status = request.args.get("status")
        data = [_render(session, s, at) for s in subs if status is None or s.status(at) == status]
        return page_json(data, nxt)


@bp.post("/subscriptions/<subscription_id>/cancel")
@documented(body=SubscriptionCancel, response=SubscriptionShape)
def cancel_subscription(subscription_id: str):
    """Cancel: immediately, on a requested date, or at the end of the current term."""
    body = require_object(json_body(), "body")
    check_fields(body, {"cancel_option", "cancellation_date", "allow_invoice_credit_or_void"}, "")
    option = body.get("cancel_option")
    if option not in ("immediate", "requested_date", "end_of_subscription_term"):
        raise bad("cancel_option", "must be immediate, requested_date or end_of_subscription_term")
    at = now()
    with session_scope(engine()) as session:
        sub = service_plans.cancel_subscription(
            session, subscription_id, option=option,
            cancellation_date=optional_instant(body.get("cancellation_date"), "cancellation_date"), now=at)
        return _render(session, sub, at, mutated=True)


@bp.post("/subscriptions/<subscription_id>/schedule_plan_change")
@documented(body=PlanChange, response=SubscriptionShape)
def schedule_plan_change(subscription_id: str):
    """Change plan: immediately, on a requested date (possibly past), or at the end of the term."""
    body = require_object(json_body(), "body")
    check_fields(body, {"change_option", "change_date", "plan_id", "external_plan_id", "plan_version_number",
                        "add_prices", "remove_prices", "replace_prices", "add_adjustments", "remove_adjustments",
                        "align_billing_with_plan_change_date", "billing_cycle_alignment"}, "", _IGNORED)
    option = body.get("change_option")
    if option not in ("immediate", "requested_date", "end_of_subscription_term"):
        raise bad("change_option", "must be immediate, requested_date or end_of_subscription_term")
    if body.get("billing_cycle_alignment") not in (None, "unchanged"):
        raise bad("billing_cycle_alignment", "only 'unchanged' is supported")
    at = now()
    with session_scope(engine()) as session:
        plan = _plan(session, body)
        version = _version(body)
        plan.version(version)
        sub = service_plans.change_plan(
            session, subscription_id, plan, version=version, option=option,
            change_date=optional_instant(body.get("change_date"), "change_date"),
            changes=_changes(session, body, plan, version), now=at)
        return _render(session, sub, at, mutated=True)


def _relative(value: Any, sub: Subscription, at: datetime, field: str) -> datetime | None:
    if value == "start_of_term":
        return billing_period(sub, at).start
    if value == "end_of_term":
        return billing_period(sub, at).end
    return optional_instant(value, field)


@bp.post("/subscriptions/<subscription_id>/price_intervals")
@documented(body=PriceIntervalsEdit, response=SubscriptionShape)
def price_intervals(subscription_id: str):
    """Add and edit price intervals (e.g. a negotiated rate from a date, possibly in the past)."""
    body = require_object(json_body(), "body")
    check_fields(body, {"add", "edit", "add_adjustments", "allow_invoice_credit_or_void"}, "",
                 {"edit_adjustments", "can_defer_billing"})
    if body.get("edit_adjustments"):
        raise bad("edit_adjustments", "is not supported")
    at = now()
    with session_scope(engine()) as session:
        sub = SqlSubscriptions(session).get(subscription_id)
        adds = []
        for i, raw in enumerate(require_list(body.get("add"), "add")):
            raw = require_object(raw, f"add[{i}]")
            check_fields(raw, {"price", "price_id", "external_price_id", "start_date", "end_date", "minimum_amount",
                               "maximum_amount", "fixed_price_quantity"}, f"add[{i}]",
                         {"allocation_price", "discounts", "filter", "usage_customer_ids", "can_defer_billing",
                          "fixed_fee_quantity_transitions", "metric_parameter_overrides"})
            if raw.get("start_date") is None:
                raise bad(f"add[{i}].start_date", "is required")
            adds.append(AddPrice(_resolve_price(session, raw, sub.currency, f"add[{i}]"),
                                 start=_relative(raw["start_date"], sub, at, f"add[{i}].start_date"),
                                 end=_relative(raw.get("end_date"), sub, at, f"add[{i}].end_date")))
        edits = []
        for i, raw in enumerate(require_list(body.get("edit"), "edit")):
            raw = require_object(raw, f"edit[{i}]")
            check_fields(raw, {"price_interval_id", "start_date", "end_date"}, f"edit[{i}]",
                         {"billing_cycle_day", "filter", "usage_customer_ids", "can_defer_billing",
                          "fixed_fee_quantity_transitions", "metric_parameter_overrides"})
            if not raw.get("price_interval_id"):
                raise bad(f"edit[{i}].price_interval_id", "is required")
            edits.append(IntervalEdit(
                str(raw["price_interval_id"]),
                start=_relative(raw.get("start_date"), sub, at, f"edit[{i}].start_date"),
                end=_relative(raw.get("end_date"), sub, at, f"edit[{i}].end_date"),
                clear_end="end_date" in raw and raw["end_date"] is None))
        adjustments = _add_adjustments(body.get("add_adjustments"), "add_adjustments")
        sub = service_plans.edit_intervals(session, subscription_id, add=adds, edit=edits,
                                           add_adjustments=adjustments, now=at)
        return _render(session, sub, at, mutated=True)


def _timeframe() -> tuple[datetime | None, datetime | None]:
    view_mode = request.args.get("view_mode")
    if view_mode not in (None, "", "cumulative"):
        raise bad("view_mode", "only 'cumulative' is supported")
    start = request.args.get("timeframe_start")
    end = request.args.get("timeframe_end")
    return (parse_instant(start, "timeframe_start") if start else None,
            parse_instant(end, "timeframe_end") if end else None)


@bp.get("/subscriptions/<subscription_id>/costs")
@documented(query=TimeframeQuery, response=Costs)
def subscription_costs(subscription_id: str):
    """Cumulative costs per price, unrounded and rounded (default: current period start .. now)."""
    start, end = _timeframe()
    at = now()
    with session_scope(engine()) as session:
        sub = SqlSubscriptions(session).get(subscription_id)
        result = service_plans.subscription_costs(sub, usage_source(engine()), timeframe_start=start,
                                                  timeframe_end=end, now=at)
        return costs_json([result], _item_names(session))


def _customer_costs(session: Session, customer: Customer) -> dict[str, Any]:
    start, end = _timeframe()
    result = service_plans.customer_costs(session, customer.id, usage_source(engine()), timeframe_start=start,
                                          timeframe_end=end, now=now())
    return costs_json(result, _item_names(session))


@bp.get("/customers/<customer_id>/costs")
@documented(query=TimeframeQuery, response=Costs)
def customer_costs(customer_id: str):
    """Costs of every subscription of a customer."""
    with session_scope(engine()) as session:
        return _customer_costs(session, SqlCustomerRepository(session).get(customer_id))


@bp.get("/customers/external_customer_id/<external_customer_id>/costs")
@documented(query=TimeframeQuery, response=Costs)
def customer_costs_by_external_id(external_customer_id: str):
    """Costs of every subscription of a customer named by its external id."""
    with session_scope(engine()) as session:
        return _customer_costs(session, SqlCustomerRepository(session).get_by_external_id(external_customer_id))


@bp.get("/subscriptions/<subscription_id>/usage")
@documented(query=UsageQuery, response=Usage)
def subscription_usage(subscription_id: str):
    """Usage per metric per day over the timeframe."""
    if request.args.get("granularity") not in (None, "", "day"):
        raise bad("granularity", "only 'day' is supported")
    if request.args.get("group_by"):
        raise bad("group_by", "is not supported")
    start, end = _timeframe()
    at = now()
    with session_scope(engine()) as session:
        sub = SqlSubscriptions(session).get(subscription_id)
        metrics = SqlMetricRepository(session)
        usage = service_plans.subscription_usage(sub, usage_source(engine()), timeframe_start=start,
                                                 timeframe_end=end, now=at,
                                                 metric_id=request.args.get("billable_metric_id"))
        data = []
        for entry in usage:
            try:
                name = metrics.get(entry.metric_id).name
            except NotFound:  # a metric defined outside the table still has its id
                name = entry.metric_id
            data.append({
                "billable_metric": {"id": entry.metric_id, "name": name}, "view_mode": "periodic",
                "usage": [{"quantity": exact_number(d.quantity), "timeframe_start": d.timeframe_start.isoformat().replace("+00:00", "Z"),
                           "timeframe_end": d.timeframe_end.isoformat().replace("+00:00", "Z")} for d in entry.usage],
            })
        return {"data": data, "pagination_metadata": None}

