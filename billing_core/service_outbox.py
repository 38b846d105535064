"""Use cases of outbound webhooks on the caller's session: endpoints, and ``emit`` — an event
written to the outbox in the transaction of the change that caused it.

``emit`` fans the event out at once to the endpoints that want its type (a pending delivery
each; enabled, or disabled after sustained failure) and marks the connection (``OUTBOX_FLAG``),
so the process signals the sender at the commit (``worker/outbound.py``). Bodies follow the client's standard
webhook event types (``types/webhooks/*_standard_webhook_event.py``): a subscription's own fields
with its customer and plan as references, an invoice without its line items. Orb's events also
store their expanded resources (``types/*_webhook_event.py``: the full subscription, the full
invoice, as ``orb_json`` renders them for the API), rendered in the same transaction, so either
style of payload shows the object as of the change; the sender picks the endpoint's style.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from sqlalchemy.orm import Session

from billing_core.customers import Customer
from billing_core.errors import InvalidInput
from billing_core.invoices import Invoice
from billing_core.lines import iso
from billing_core.orb_json import invoice_json, subscription_json
from billing_core.outbox import EVENT_TYPES, PAYLOAD_STYLES, Endpoint, OutboxEvent, check_event_types
from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.customers import SqlCustomerRepository
from billing_core.persistence.outbox import SqlOutbox
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.plans import Plan, PlanNotFound
from billing_core.subscriptions import Subscription

__all__ = [
    "OUTBOX_FLAG", "create_endpoint", "emit", "emit_ended", "emit_invoice_issued", "emit_subscription",
    "prefetch_customers", "subscription_expanded", "subscription_summary", "update_endpoint",
]

OUTBOX_FLAG = "marketsync.outbox_emitted"
_UNSET: Any = object()


def emit(session: Session, event_type: str, body: Mapping[str, Any], *, now: datetime,
         ordering_key: str | None = None, skip_endpoint: str | None = None,
         expanded: Callable[[], Mapping[str, Any]] | None = None, cache: RenderCache | None = None) -> str:
    """Write one event (``body``: its resources and ``properties``) to the outbox; return its id.

    Call it inside the transaction of the change: both commit, or neither. Events with the same
    ``ordering_key`` (a subscription, a contract) reach each endpoint in the order they were written.
    ``skip_endpoint``: an endpoint the event is about and must not go to (the one just disabled).
    ``expanded``: renders the resources an expanded payload carries instead of the body's; called
    only when some endpoint gets the event (whatever its style now: it may change before the send).
    ``cache``: a pass's render cache (see ``emit_subscription``): the endpoints are read once for it.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    outbox = SqlOutbox(session)
    # An endpoint disabled after sustained failure keeps its events (sent once it is enabled again);
    # one its owner disabled gets none.
    targets = [e.id for e in _cached(cache, ("endpoints", ""), outbox.endpoints)
               if (e.enabled or e.disabled_reason == "sustained_failure") and e.wants(event_type)
               and e.id != skip_endpoint]
    event_id = f"whe_{uuid.uuid4().hex[:20]}"
    outbox.append(OutboxEvent(seq=0, id=event_id, type=event_type, ordering_key=ordering_key,
                              body=dict(body), created_at=now,
                              expanded=dict(expanded()) if expanded is not None and targets else None), targets)
    if targets:
        session.connection().info[OUTBOX_FLAG] = True  # the connection's commit signals the sender
    return event_id


# --- bodies ------------------------------------------------------------------------------------------

RenderCache = dict  # (kind, id) -> what a render read: one evaluation's many firings read each once


def _cached(cache: RenderCache | None, key: tuple[str, str], read: Any) -> Any:
    if cache is None:
        return read()
    if key not in cache:
        cache[key] = read()
    return cache[key]


def _customer_and_plan(session: Session, sub: Subscription, at: datetime,
                       cache: RenderCache | None = None) -> tuple[Customer, Plan | None]:
    customer = _cached(cache, ("customer", sub.customer_id), lambda: SqlCustomerRepository(session).get(sub.customer_id))

    def plan() -> Plan | None:
        try:
            return SqlCatalog(session).get_plan(sub.phase_at(at).plan_id)
        except PlanNotFound:
            return None
    return customer, _cached(cache, ("plan", sub.phase_at(at).plan_id), plan)


def prefetch_customers(session: Session, subs: Sequence[Subscription], cache: RenderCache) -> None:
    """Read the customers of ``subs`` into ``cache`` in bulk (a pass about to emit for many of them)."""
    wanted = [s.customer_id for s in subs if ("customer", s.customer_id) not in cache]
    for customer_id, customer in SqlCustomerRepository(session).get_many(wanted).items():
        cache[("customer", customer_id)] = customer


def subscription_summary(session: Session, sub: Subscription, *, at: datetime,
                         cache: RenderCache | None = None) -> dict[str, Any]:
    """Return a subscription as standard payloads carry it: its own fields, customer and plan as references."""
    customer, plan = _customer_and_plan(session, sub, at, cache)
    plan_ref = ({"id": plan.id, "external_plan_id": plan.external_plan_id, "name": plan.name} if plan else
                {"id": sub.phase_at(at).plan_id, "external_plan_id": None, "name": None})
    return {
        "id": sub.id, "created_at": iso(sub.created_at or sub.start),
        "customer": {"id": customer.id, "external_customer_id": customer.external_customer_id},
        "start_date": iso(sub.start), "end_date": iso(sub.end), "metadata": dict(sub.metadata),
        "name": plan.name if plan else "", "plan": plan_ref, "status": sub.status(at),
    }


def subscription_expanded(session: Session, sub: Subscription, *, at: datetime,
                          cache: RenderCache | None = None) -> dict[str, Any]:
    """Return a subscription as expanded payloads carry it: Orb's full subscription, as the API renders it."""
    customer, plan = _customer_and_plan(session, sub, at, cache)
    item_names = _cached(cache, ("items", ""), lambda: SqlCatalog(session).item_names())
    return subscription_json(sub, customer=customer, plan=plan, at=at, item_names=item_names)


def emit_subscription(session: Session, event_type: str, sub: Subscription, *, now: datetime,
                      properties: Mapping[str, Any] | None = None, cache: RenderCache | None = None) -> str:
    """Emit a ``subscription.*`` event for ``sub`` (ordered per subscription), in both payload styles.

    ``cache``: one dict shared by many emits in one pass that changes no customer, plan, item or
    webhook endpoint (an alert evaluation), so each is read once rather than per event
    (``prefetch_customers`` fills it for many subscriptions in one read)."""
    body = {"type": event_type, "subscription": subscription_summary(session, sub, at=now, cache=cache),
            "properties": dict(properties or {})}
    return emit(session, event_type, body, now=now, ordering_key=f"subscription:{sub.id}",
                expanded=lambda: {"subscription": subscription_expanded(session, sub, at=now, cache=cache)},
                cache=cache)


def emit_ended(session: Session, *, since: datetime, now: datetime) -> int:
    """Emit ``subscription.ended`` for each subscription whose end fell in ``(since, now]`` and has none yet.

    An edit that ends a subscription at once emits it with the edit; one that ends it later (at the
    end of its term, a marketplace's cancellation instant) is told here, by a sweep. Returns how many.
    """
    outbox, emitted = SqlOutbox(session), 0
    for sub in SqlSubscriptions(session).ended_between(since, now):
        if not outbox.has_event("subscription.ended", f"subscription:{sub.id}"):
            emit_subscription(session, "subscription.ended", sub, now=now)
            emitted += 1
    return emitted


# What a standard payload keeps of Orb's invoice (``InvoiceIssuedStandardWebhookEvent``): no line items.
_STANDARD_INVOICE = (
    "id", "invoice_number", "status", "currency", "total", "amount_due", "customer", "subscription",
    "invoice_date", "issued_at", "created_at", "due_date", "paid_at", "voided_at", "invoice_source", "metadata",
    "memo", "payment_attempts", "auto_collection", "credit_notes", "customer_balance_transactions",
    "will_auto_issue", "hosted_invoice_url", "invoice_pdf",
)


def emit_invoice_issued(session: Session, invoice: Invoice, *, now: datetime) -> str:
    """Emit ``invoice.issued`` for a just-issued invoice: Orb's full invoice (expanded), its own fields (standard)."""
    customer = SqlCustomerRepository(session).get(invoice.customer_id)
    full = invoice_json(invoice, customer=customer, at=now)
    body = {"type": "invoice.issued", "properties": {"automatically_marked_as_paid": False},
            "invoice": {key: full[key] for key in _STANDARD_INVOICE}}
    return emit(session, "invoice.issued", body, now=now, ordering_key=f"subscription:{invoice.subscription_id}",
                expanded=lambda: {"invoice": full})


# --- endpoints ----------------------------------------------------------------------------------------

def _style(value: Any) -> str:
    if value not in PAYLOAD_STYLES:
        raise InvalidInput("payload_style: use expanded or standard", field="payload_style")
    return str(value)


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")) or len(value) > 2000:
        raise InvalidInput("url: must be an http(s) URL of at most 2000 characters", field="url")
    return value


def create_endpoint(session: Session, *, url: Any, enabled_event_types: Any = None, payload_style: Any = None,
                    now: datetime, endpoint_id: str) -> Endpoint:
    """Create an endpoint with a fresh signing secret (the caller returns it once, never again)."""
    endpoint = Endpoint(
        id=endpoint_id, url=_url(url), secret="whsec_" + secrets.token_urlsafe(32), enabled=True,
        enabled_event_types=check_event_types(enabled_event_types),
        payload_style=_style(payload_style if payload_style is not None else "expanded"), created_at=now)
    return SqlOutbox(session).add_endpoint(endpoint)


def update_endpoint(session: Session, endpoint_id: str, *, url: Any = _UNSET, enabled_event_types: Any = _UNSET,
                    payload_style: Any = _UNSET, enabled: bool | None = None) -> Endpoint:
    """Change an endpoint's url, event types, payload style or enabled state (locked read-modify-write).

    Enabling clears the failure streak that disabled it, so its pending deliveries go out again.
    """
    outbox = SqlOutbox(session)
    endpoint = outbox.get_endpoint(endpoint_id, for_update=True)
    if url is not _UNSET and url is not None:
        endpoint = replace(endpoint, url=_url(url))
    if enabled_event_types is not _UNSET:
        endpoint = replace(endpoint, enabled_event_types=check_event_types(enabled_event_types))
    if payload_style is not _UNSET and payload_style is not None:
        endpoint = replace(endpoint, payload_style=_style(payload_style))
    if enabled is not None and enabled != endpoint.enabled:
        endpoint = replace(endpoint, enabled=enabled, failing_since=None,
                           disabled_reason=None if enabled else "user")
    return outbox.save_endpoint(endpoint)
