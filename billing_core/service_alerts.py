"""Use cases of alerts on the caller's session: create, change thresholds, enable or disable, and
``evaluate`` — the thresholds a subscription's current-period usage or cost has reached, each
stored once per period and emitted as ``subscription.usage_exceeded`` / ``cost_exceeded`` in the
same transaction (``billing_core/alerts.py`` says when a threshold fires).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping, Sequence

from sqlalchemy.orm import Session

from billing_core.alerts import CREDIT_TYPES, SUBSCRIPTION_TYPES, Alert, crossed, parse_thresholds
from billing_core.costs import Costs
from billing_core.errors import InvalidInput
from billing_core.lines import iso
from billing_core.money import exact_number, format_decimal
from billing_core.persistence.alerts import SqlAlerts
from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.metrics import SqlMetricRepository
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.plans import PlanNotFound
from billing_core.service_outbox import emit_subscription, prefetch_customers
from billing_core.subscriptions import Subscription, billing_period

__all__ = ["alert_body", "applies", "create_alert", "evaluate", "set_enabled", "update_thresholds"]


def create_alert(session: Session, *, scope: str, scope_id: str, body: Mapping[str, Any], now: datetime,
                 alert_id: str) -> Alert:
    """Create an alert for a customer (credit types), a subscription or a plan (usage and cost types).

    ``scope`` is ``customer``, ``external_customer``, ``subscription`` or ``plan``; the scoped object
    and the metric must exist (NotFound otherwise); a bad field is InvalidInput naming it.
    """
    kind = body.get("type")
    currency = body.get("currency")
    if currency is not None and (not isinstance(currency, str) or not 1 <= len(currency) <= 8):
        raise InvalidInput("currency: must be a currency code", field="currency")
    fields: dict[str, Any] = {}
    if scope in ("customer", "external_customer"):
        if kind not in CREDIT_TYPES:
            raise InvalidInput(f"type: a customer alert is one of {', '.join(CREDIT_TYPES)}", field="type")
        if not currency:
            raise InvalidInput("currency: required for a credit balance alert", field="currency")
        customers = SqlCustomerRepository(session)
        customer = customers.get(scope_id) if scope == "customer" else customers.get_by_external_id(scope_id)
        fields["customer_id"] = customer.id
        thresholds = parse_thresholds(body.get("thresholds"), required=False)
    else:
        if kind not in SUBSCRIPTION_TYPES:
            raise InvalidInput(f"type: one of {', '.join(SUBSCRIPTION_TYPES)}", field="type")
        thresholds = parse_thresholds(body.get("thresholds"))
        if scope == "subscription":
            fields["subscription_id"] = SqlSubscriptions(session).get(scope_id).id
        else:
            plan = SqlCatalog(session).get_plan(scope_id)
            version = body.get("plan_version")
            if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                        or version not in {v.version for v in plan.versions}):
                raise InvalidInput("plan_version: not a version of this plan", field="plan_version")
            fields.update(plan_id=plan.id, plan_version=version)
        metric_id = body.get("metric_id")
        if kind == "usage_exceeded":
            if not isinstance(metric_id, str) or not metric_id:
                raise InvalidInput("metric_id: required for a usage_exceeded alert", field="metric_id")
            fields["metric_id"] = SqlMetricRepository(session).get(metric_id).id
        elif metric_id is not None:
            raise InvalidInput("metric_id: only for a usage_exceeded alert", field="metric_id")
    alert = Alert(id=alert_id, type=str(kind), thresholds=thresholds, enabled=True, created_at=now,
                  currency=currency, **fields)
    return SqlAlerts(session).add(alert)


def update_thresholds(session: Session, alert_id: str, thresholds: Any) -> Alert:
    """Replace an alert's thresholds (locked read-modify-write)."""
    repo = SqlAlerts(session)
    alert = repo.get(alert_id, for_update=True)
    return repo.save(replace(alert, thresholds=parse_thresholds(thresholds, required=alert.type in SUBSCRIPTION_TYPES)))


def set_enabled(session: Session, alert_id: str, enabled: bool) -> Alert:
    """Enable or disable an alert; thresholds already reached this period stay reached (no re-fire)."""
    repo = SqlAlerts(session)
    alert = repo.get(alert_id, for_update=True)
    return alert if alert.enabled == enabled else repo.save(replace(alert, enabled=enabled))


def applies(alert: Alert, sub: Subscription, at: datetime) -> bool:
    """Tell whether ``alert`` watches ``sub`` (its own, or its plan's, or its plan version's)."""
    if alert.type not in SUBSCRIPTION_TYPES:
        return False
    if alert.subscription_id is not None:
        return alert.subscription_id == sub.id
    phase = sub.phase_at(at)
    return alert.plan_id == phase.plan_id and alert.plan_version in (None, phase.plan_version)


def observed(alert: Alert, cost: Costs) -> Decimal | None:
    """Return what ``alert`` compares with its thresholds: the period's amount, or the metric's quantity."""
    if alert.type == "cost_exceeded":
        return cost.total
    quantities = [p.quantity for p in cost.per_price_costs if p.price.metric_id == alert.metric_id]
    return max(quantities) if quantities else None


def alert_body(session: Session, alert: Alert) -> dict[str, Any]:
    """Return an alert as Orb's ``Alert`` (thresholds as decimal strings; the API renders numbers)."""
    plan = None
    if alert.plan_id is not None:
        try:
            found = SqlCatalog(session).get_plan(alert.plan_id)
            plan = {"id": found.id, "external_plan_id": found.external_plan_id, "name": found.name}
        except PlanNotFound:
            plan = {"id": alert.plan_id, "external_plan_id": None, "name": None}
        plan["plan_version"] = str(alert.plan_version) if alert.plan_version is not None else ""
    customer = None
    if alert.customer_id is not None:
        c = SqlCustomerRepository(session).get(alert.customer_id)
        customer = {"id": c.id, "external_customer_id": c.external_customer_id}
    return {
        "id": alert.id, "created_at": iso(alert.created_at), "currency": alert.currency, "customer": customer,
        "enabled": alert.enabled, "metric": {"id": alert.metric_id} if alert.metric_id else None, "plan": plan,
        "subscription": {"id": alert.subscription_id} if alert.subscription_id else None,
        "thresholds": [{"value": format_decimal(t)} for t in alert.thresholds], "type": alert.type,
        "balance_alert_status": [] if alert.type in CREDIT_TYPES else None,
    }


def evaluate(session: Session, alerts: Sequence[Alert], subs: Sequence[Subscription],
             costs: Mapping[str, Costs], *, now: datetime) -> list[str]:
    """Store and emit every threshold the subscriptions' current-period figures reached; return event ids.

    ``costs`` holds each subscription's costs from its current period start to ``now`` (read
    through the incremental usage source by the caller). A disabled alert's reached thresholds are
    stored without an event, so enabling it later does not fire them in this period.
    """
    repo = SqlAlerts(session)
    fired = repo.fired([a.id for a in alerts], [s.id for s in subs])
    emitted: list[str] = []
    bodies: dict[str, dict[str, Any]] = {}
    renders: dict[tuple[str, str], Any] = {}  # customers, plans, item names, endpoints read once per evaluation
    prefetched = False
    own: dict[str, list[Alert]] = {}  # a subscription's own alerts, and the plans' (not every alert per subscription)
    by_plan: dict[str, list[Alert]] = {}
    position = {alert.id: i for i, alert in enumerate(alerts)}  # candidates are taken in the alerts' order
    for alert in alerts:
        if alert.subscription_id is not None:
            own.setdefault(alert.subscription_id, []).append(alert)
        elif alert.plan_id is not None:
            by_plan.setdefault(alert.plan_id, []).append(alert)
    for sub in subs:
        cost = costs.get(sub.id)
        if cost is None:
            continue
        start = billing_period(sub, now).start
        candidates = own.get(sub.id, []) + by_plan.get(sub.phase_at(now).plan_id, [])
        for alert in sorted(candidates, key=lambda a: position[a.id]):
            if not applies(alert, sub, now):
                continue
            value = observed(alert, cost)
            if value is None:
                continue
            for threshold in crossed(alert.thresholds, value, fired.get((alert.id, sub.id, start), ())):
                if not repo.record_firing(alert.id, sub.id, start, threshold, value, emitted=alert.enabled, now=now):
                    continue
                if not alert.enabled:
                    continue
                if not prefetched:  # the first firing: the customers of all, in one read
                    prefetch_customers(session, [s for s in subs if s.id in costs], renders)
                    prefetched = True
                config = bodies.setdefault(alert.id, alert_body(session, alert))
                properties: dict[str, Any] = {"alert_configuration": config, "timeframe_start": iso(start),
                                              "timeframe_end": iso(now)}
                if alert.type == "cost_exceeded":
                    properties.update(amount_threshold=format_decimal(threshold), evaluated_amount=format_decimal(value))
                else:
                    properties.update(billable_metric_id=alert.metric_id, quantity_threshold=exact_number(threshold),
                                      evaluated_quantity=exact_number(value))
                emitted.append(emit_subscription(session, f"subscription.{alert.type}", sub, now=now,
                                                 properties=properties, cache=renders))
    return emitted
