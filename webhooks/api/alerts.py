"""``/v1/alerts``: Orb's alerts — create for a customer, external customer, subscription or plan;
fetch, list, change thresholds, enable, disable, delete.

Usage and cost alerts are evaluated as usage arrives (``worker/alerting.py``) and fire
``subscription.usage_exceeded`` / ``subscription.cost_exceeded`` through the outbound webhooks.
"""

from __future__ import annotations

from typing import Any

from flask import request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from billing_core import Alert, SqlAlerts, SqlCustomerRepository, exact_number, service_alerts
from webhooks.api.common import (
    api_blueprint, bad, engine, json_body, json_object, list_filters, new_id, now, page_limit, paginated,
)
from webhooks.api.openapi import documented
from webhooks.api.schemas import Alert as AlertShape, AlertCreate, AlertQuery, AlertToggle, AlertUpdate, Page
from worker.db import session_scope

bp = api_blueprint("alerts", __name__)
_CREATE_FIELDS = {"type", "thresholds", "currency", "metric_id", "plan_version", "grouping_keys", "price_filters",
                  "threshold_overrides"}


def alert_json(session: Session, alert: Alert, last_fired: Any = None) -> dict[str, Any]:
    """Render an alert as Orb's ``Alert`` (thresholds as exact JSON numbers), with when it last fired."""
    body = service_alerts.alert_body(session, alert)
    body["thresholds"] = [{"value": exact_number(t)} for t in alert.thresholds]
    body["last_fired_at"] = last_fired[0].isoformat().replace("+00:00", "Z") if last_fired else None
    return body


def _create(scope: str, scope_id: str) -> ResponseReturnValue:
    payload = json_object(json_body(), _CREATE_FIELDS)
    for name in ("grouping_keys", "price_filters", "threshold_overrides"):
        if payload.get(name) not in (None, []):
            raise bad(name, "grouped and filtered alerts are not supported")
    with session_scope(engine()) as session:
        alert = service_alerts.create_alert(session, scope=scope, scope_id=scope_id, body=payload, now=now(),
                                            alert_id=new_id("alert"))
        return alert_json(session, alert), 201


@bp.post("/alerts/customer_id/<customer_id>")
@documented(body=AlertCreate, response=AlertShape, status=201)
def create_for_customer(customer_id: str) -> ResponseReturnValue:
    """Create a credit balance alert for a customer (stored and listed; no credit balance is kept, so it never fires)."""
    return _create("customer", customer_id)


@bp.post("/alerts/external_customer_id/<external_customer_id>")
@documented(body=AlertCreate, response=AlertShape, status=201)
def create_for_external_customer(external_customer_id: str) -> ResponseReturnValue:
    """Create a credit balance alert for a customer named by its external id."""
    return _create("external_customer", external_customer_id)


@bp.post("/alerts/subscription_id/<subscription_id>")
@documented(body=AlertCreate, response=AlertShape, status=201, links={
    f"alerts.{endpoint}": {"alert_id": "$response.body#/id"} for endpoint in ("fetch", "update", "enable", "disable")})
def create_for_subscription(subscription_id: str) -> ResponseReturnValue:
    """Create a usage_exceeded (per metric) or cost_exceeded (current period amount) alert on a subscription."""
    return _create("subscription", subscription_id)


@bp.post("/alerts/plan_id/<plan_id>")
@documented(body=AlertCreate, response=AlertShape, status=201)
def create_for_plan(plan_id: str) -> ResponseReturnValue:
    """Create a usage or cost alert on every subscription of a plan (or of one of its versions)."""
    return _create("plan", plan_id)


@bp.get("/alerts/<alert_id>")
@documented(response=AlertShape)
def fetch(alert_id: str) -> ResponseReturnValue:
    """Fetch an alert."""
    with session_scope(engine()) as session:
        repo = SqlAlerts(session)
        alert = repo.get(alert_id)
        return alert_json(session, alert, repo.last_fired([alert.id]).get(alert.id))


@bp.put("/alerts/<alert_id>")
@documented(body=AlertUpdate, response=AlertShape)
def update(alert_id: str) -> ResponseReturnValue:
    """Replace an alert's thresholds (thresholds already reached this period stay reached)."""
    payload = json_object(json_body(), {"thresholds", "price_filters", "threshold_overrides"})
    if "thresholds" not in payload:
        raise bad("thresholds", "required")
    for name in ("price_filters", "threshold_overrides"):
        if payload.get(name) not in (None, []):
            raise bad(name, "grouped and filtered alerts are not supported")
    with session_scope(engine()) as session:
        alert = service_alerts.update_thresholds(session, alert_id, payload["thresholds"])
        return alert_json(session, alert, SqlAlerts(session).last_fired([alert.id]).get(alert.id))


def _toggle(alert_id: str, enabled: bool) -> ResponseReturnValue:
    for name in request.args:
        if name != "subscription_id":
            raise bad(name, "unknown query parameter")
    with session_scope(engine()) as session:
        alert = service_alerts.set_enabled(session, alert_id, enabled)
        return alert_json(session, alert, SqlAlerts(session).last_fired([alert.id]).get(alert.id))


@bp.post("/alerts/<alert_id>/enable")
@documented(query=AlertToggle, response=AlertShape)
def enable(alert_id: str) -> ResponseReturnValue:
    """Enable an alert (a threshold already reached this period does not fire again)."""
    return _toggle(alert_id, True)


@bp.post("/alerts/<alert_id>/disable")
@documented(query=AlertToggle, response=AlertShape)
def disable(alert_id: str) -> ResponseReturnValue:
    """Disable an alert (thresholds reached meanwhile are recorded without an event)."""
    return _toggle(alert_id, False)


@bp.delete("/alerts/<alert_id>")
@documented(status=204)
def remove(alert_id: str) -> ResponseReturnValue:
    """Delete an alert and its firings."""
    with session_scope(engine()) as session:
        SqlAlerts(session).delete(alert_id)
    return "", 204


@bp.get("/alerts")
@documented(query=AlertQuery, response=Page[AlertShape])
def index() -> ResponseReturnValue:
    """List alerts, newest first (filters: customer_id, external_customer_id, subscription_id)."""
    created = list_filters(("customer_id", "external_customer_id", "subscription_id"))
    limit = page_limit()
    with session_scope(engine()) as session:
        customer_id = request.args.get("customer_id") or None
        external = request.args.get("external_customer_id") or None
        if external:
            customer_id = SqlCustomerRepository(session).get_by_external_id(external).id
        repo = SqlAlerts(session)
        alerts, cursor = repo.list(limit=limit, cursor=request.args.get("cursor") or None, created_at=created,
                                   subscription_id=request.args.get("subscription_id") or None,
                                   customer_id=customer_id)
        fired = repo.last_fired([a.id for a in alerts])
        data = [alert_json(session, a, fired.get(a.id)) for a in alerts]
    return paginated(data, has_more=cursor is not None, next_cursor=cursor)
