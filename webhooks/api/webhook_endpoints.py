"""``/v1/webhook_endpoints``: where outbound webhooks go (Orb's webhook endpoints), and their delivery log.

The signing secret is in the create answer only; no other answer, log or page shows it. Beyond
Orb: ``GET .../{id}/deliveries`` (attempts, status codes, last error) and
``POST .../{id}/deliveries/{delivery_id}/replay`` (send again now).
"""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from flask.typing import ResponseReturnValue

from billing_core import Delivery, Endpoint, OutboxEvent, SqlOutbox, iso, service_outbox
from webhooks.api.common import (
    api_blueprint, bad, cursor_id, engine, json_body, json_object, list_filters, new_id, now, page_json, page_limit,
    paginated,
)
from webhooks.api.openapi import documented
from webhooks.api.schemas import (
    CursorQuery, DeliveryQuery, Page, WebhookDelivery, WebhookEndpoint as EndpointShape, WebhookEndpointCreate,
    WebhookEndpointUpdate, WebhookEndpointWithSecret,
)
from worker import queueing
from worker.db import session_scope

bp = api_blueprint("webhook_endpoints", __name__)
_FIELDS = {"url", "enabled_event_types", "payload_style"}


def endpoint_json(endpoint: Endpoint) -> dict[str, Any]:
    """Render an endpoint as Orb's ``WebhookEndpoint`` (never its secret)."""
    return {"id": endpoint.id, "created_at": iso(endpoint.created_at), "enabled": endpoint.enabled,
            "enabled_event_types": list(endpoint.enabled_event_types) if endpoint.enabled_event_types is not None
            else None, "payload_style": endpoint.payload_style, "url": endpoint.url}


def delivery_json(delivery: Delivery, event: OutboxEvent) -> dict[str, Any]:
    """Render one delivery of the log."""
    return {"id": delivery.id, "event_id": event.id, "event_type": event.type,
            "event_created_at": iso(event.created_at), "status": delivery.status, "attempts": delivery.attempts,
            "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == "pending" else None,
            "last_attempt_at": iso(delivery.last_attempt_at), "last_status_code": delivery.last_status_code,
            "last_error": delivery.last_error, "delivered_at": iso(delivery.delivered_at)}


def _signal() -> None:
    queueing.webhook_signal(current_app.extensions["marketsync"]).request()


@bp.post("/webhook_endpoints")
@documented(body=WebhookEndpointCreate, response=WebhookEndpointWithSecret, status=201, links={
    f"webhook_endpoints.{endpoint}": {"webhook_endpoint_id": "$response.body#/id"}
    for endpoint in ("fetch", "update", "remove", "enable", "disable", "deliveries")})
def create() -> ResponseReturnValue:
    """Create an endpoint; the answer carries its signing secret, shown this once."""
    payload = json_object(json_body(), _FIELDS)
    if "url" not in payload:
        raise bad("url", "required")
    with session_scope(engine()) as session:
        endpoint = service_outbox.create_endpoint(
            session, url=payload["url"], enabled_event_types=payload.get("enabled_event_types"),
            payload_style=payload.get("payload_style"), now=now(), endpoint_id=new_id("we"))
    return {**endpoint_json(endpoint), "secret": endpoint.secret}, 201


@bp.get("/webhook_endpoints/<webhook_endpoint_id>")
@documented(response=EndpointShape)
def fetch(webhook_endpoint_id: str) -> ResponseReturnValue:
    """Fetch an endpoint (without its secret)."""
    with session_scope(engine()) as session:
        return endpoint_json(SqlOutbox(session).get_endpoint(webhook_endpoint_id))


@bp.put("/webhook_endpoints/<webhook_endpoint_id>")
@documented(body=WebhookEndpointUpdate, response=EndpointShape)
def update(webhook_endpoint_id: str) -> ResponseReturnValue:
    """Change an endpoint's url, event types (null: every type) or payload style; omitted fields stay."""
    payload = json_object(json_body(), _FIELDS)
    changes = {k: payload[k] for k in ("url", "enabled_event_types", "payload_style") if k in payload}
    if "url" in changes and changes["url"] is None:
        raise bad("url", "must be an http(s) URL")
    with session_scope(engine()) as session:
        return endpoint_json(service_outbox.update_endpoint(session, webhook_endpoint_id, **changes))


@bp.get("/webhook_endpoints")
@documented(query=CursorQuery, response=Page[EndpointShape])
def index() -> ResponseReturnValue:
    """List endpoints, newest first, with Orb's cursor pagination."""
    list_filters()
    limit = page_limit()
    with session_scope(engine()) as session:
        endpoints, cursor = SqlOutbox(session).list_endpoints(limit=limit, cursor=request.args.get("cursor") or None)
    return paginated([endpoint_json(e) for e in endpoints], has_more=cursor is not None, next_cursor=cursor)


@bp.delete("/webhook_endpoints/<webhook_endpoint_id>")
@documented(status=204)
def remove(webhook_endpoint_id: str) -> ResponseReturnValue:
    """Delete an endpoint and its delivery log (nothing more is sent to it)."""
    with session_scope(engine()) as session:
        SqlOutbox(session).delete_endpoint(webhook_endpoint_id)
    return "", 204


def _enabled(webhook_endpoint_id: str, enabled: bool) -> ResponseReturnValue:
    with session_scope(engine()) as session:
        endpoint = service_outbox.update_endpoint(session, webhook_endpoint_id, enabled=enabled)
    if enabled:
        _signal()
    return endpoint_json(endpoint)


@bp.post("/webhook_endpoints/<webhook_endpoint_id>/enable")
@documented(response=EndpointShape)
def enable(webhook_endpoint_id: str) -> ResponseReturnValue:
    """Enable an endpoint (also one disabled after sustained failure): what is pending goes out."""
    return _enabled(webhook_endpoint_id, True)


@bp.post("/webhook_endpoints/<webhook_endpoint_id>/disable")
@documented(response=EndpointShape)
def disable(webhook_endpoint_id: str) -> ResponseReturnValue:
    """Disable an endpoint: nothing is sent to it, and events until it is enabled again are not kept for it."""
    return _enabled(webhook_endpoint_id, False)


@bp.get("/webhook_endpoints/<webhook_endpoint_id>/deliveries")
@documented(query=DeliveryQuery, response=Page[WebhookDelivery])
def deliveries(webhook_endpoint_id: str) -> ResponseReturnValue:
    """The endpoint's delivery log, newest first: attempts, last status code and error."""
    list_filters()
    limit = page_limit()
    raw = cursor_id()
    try:
        before = int(raw) if raw is not None else None
    except ValueError:
        raise bad("cursor", "not a valid cursor") from None
    with session_scope(engine()) as session:
        outbox = SqlOutbox(session)
        outbox.get_endpoint(webhook_endpoint_id)
        rows = outbox.deliveries(webhook_endpoint_id, limit=limit + 1, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    return page_json([delivery_json(d, e) for d, e in rows], str(rows[-1][0].id) if more else None)


@bp.post("/webhook_endpoints/<webhook_endpoint_id>/deliveries/<int:delivery_id>/replay")
@documented(response=WebhookDelivery)
def replay(webhook_endpoint_id: str, delivery_id: int) -> ResponseReturnValue:
    """Send a delivery again now (delivered or failed ones too), in order with its subscription's others."""
    with session_scope(engine()) as session:
        outbox = SqlOutbox(session)
        delivery = outbox.replay(webhook_endpoint_id, delivery_id, now())
        event = outbox.events([delivery.event_seq])[delivery.event_seq]
    _signal()
    return delivery_json(delivery, event)
