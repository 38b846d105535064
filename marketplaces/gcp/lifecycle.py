"""Google Cloud Marketplace steps before applying a contract event.

Google's Pub/Sub events are hints: they may be redelivered, arrive out of order, or describe a
state that has moved on (docs/marketplaces.md §4.6). ``before_apply`` therefore GETs the entitlement
through the Partner Procurement API for every event and acts on its *current* state, filling
the event with the product (``productExternalName``), plan, account id and ``usageReportingId``:

- an entitlement awaiting activation is approved when a listing exists for its product and plan
  and the listing approves entitlements; otherwise it is left to the operator and recorded as a
  pending, unmapped contract with the reason. The ``ENTITLEMENT_ACTIVE`` push that follows an
  approval creates the mapping;
- ``ENTITLEMENT_ACTIVE`` / ``ENTITLEMENT_OFFER_ACCEPTED`` -> ``created`` on the current plan;
- ``ENTITLEMENT_PLAN_CHANGE_REQUESTED`` -> the pending plan change is approved when a listing
  exists for the new plan, left to the operator when that listing does not approve
  automatically, and rejected with a reason when none exists (no plan switch yet);
- ``ENTITLEMENT_PLAN_CHANGED`` -> ``modified`` with the new plan, from the event's time;
- ``ENTITLEMENT_CANCELLING`` / ``ENTITLEMENT_CANCELLED`` / ``ENTITLEMENT_DELETED`` or a 404 on
  GET -> ``canceled`` (the contract use case ignores a second cancellation).

**Cancellation time.** For an entitlement in state ``ENTITLEMENT_CANCELLED`` the subscription
ends at the earlier of its ``updateTime`` (when Google moved it to cancelled) and its
``subscriptionEndTime`` (the end of a non-renewing term), so nothing is billed past either.
While the GET does not show it cancelled yet (``ENTITLEMENT_CANCELLING``), or once it is gone
(404), the event's own time is used (its ``updateTime``, else the receipt time).

**Missing usageReportingId.** Google may create an active entitlement before its
``usageReportingId`` exists (docs/marketplaces.md §4.6). Without it no usage can be reported, so the
activation raises ``TransientMarketplaceError`` and the RQ job GETs again later (10 s, 1 min,
5 min, ...). The subscription still starts at the activation time, so nothing is lost.

Procurement errors that may pass (5xx, throttling, timeouts) propagate as
``TransientMarketplaceError`` so the job is retried; every step is safe to repeat because each
retry starts from a fresh GET.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Mapping

import structlog

from marketplaces.base import TransientMarketplaceError
from marketplaces.gcp.notifications import parse_rfc3339
from marketplaces.gcp.procurement import commitments_of
from marketplaces.lifecycle import LifecycleContext

log = structlog.get_logger("marketsync.lifecycle.gcp")

ACTIVATION_REQUESTED = "ENTITLEMENT_ACTIVATION_REQUESTED"
PENDING_PLAN_CHANGE_APPROVAL = "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL"
CANCELLED = "ENTITLEMENT_CANCELLED"
SUSPENDED = "ENTITLEMENT_SUSPENDED"
_ACTIVATIONS = ("ENTITLEMENT_ACTIVE", "ENTITLEMENT_OFFER_ACCEPTED")
_CANCELLATIONS = ("ENTITLEMENT_CANCELLING", "ENTITLEMENT_CANCELLED", "ENTITLEMENT_DELETED")
_REASON_LIMIT = 256  # bytes: the longest reason Procurement accepts (docs/marketplaces.md §4.6)


def before_apply(context: LifecycleContext, event: Any) -> Any:
    """Return the event as the entitlement's current state says; approve what the listings allow."""
    if event.marketplace != "gcp" or not event.contract_key:
        return event
    adapter = context.adapter
    entitlement = adapter.get_entitlement(event.contract_key)
    if entitlement is None:
        # Deleted at Google (or never visible to us): the contract ends, if it exists.
        log.info("gcp_entitlement_gone", entitlement_id=event.contract_key, action=event.action)
        return replace(event, kind="canceled")

    state = str(entitlement.get("state") or "")
    identifiers = _identifiers(event, entitlement)
    plan = identifiers.get("plan_id") or None
    # Commitments (docs/billing-rules.md §12.6): read with every GET, in effect from the event's time.
    filled = replace(event, identifiers=identifiers, entitlements=commitments_of(entitlement))

    if event.action in _CANCELLATIONS or (state == CANCELLED and event.kind != "created"):
        return replace(filled, kind="canceled", effective_at=_cancel_time(event, entitlement, state))
    if state == ACTIVATION_REQUESTED:
        _decide_activation(context, filled, plan)
        return replace(filled, kind="pending")
    if event.action == "ENTITLEMENT_PLAN_CHANGE_REQUESTED":
        if state == PENDING_PLAN_CHANGE_APPROVAL and entitlement.get("newPendingPlan"):
            _decide_plan_change(context, filled, str(entitlement["newPendingPlan"]))
        return replace(filled, kind="pending")
    if event.action in _ACTIVATIONS or event.kind == "created":
        # Also when the entitlement is cancelled by now: the contract is created from its
        # activation time, and the cancellation waiting for it (deferred) is applied next.
        if not identifiers.get("usage_reporting_id"):
            raise TransientMarketplaceError(
                f"entitlement {event.contract_key} is active but has no usageReportingId yet; GET it again later")
        return replace(filled, kind="created", plan=plan)
    if event.action == "ENTITLEMENT_PLAN_CHANGED" or event.kind == "modified":
        return replace(filled, kind="modified", plan=plan)
    if state == SUSPENDED:
        return replace(filled, kind="suspended")
    return filled


# --- approvals ------------------------------------------------------------------------------------

def _decide_activation(context: LifecycleContext, event: Any, plan: str | None) -> None:
    """Approve a requested entitlement, or record it for the operator with the reason."""
    listing = context.find_listing(event.identifiers, plan)
    product = event.identifiers.get("product_id", "(none)")
    if listing is None:
        reason = (f"entitlement awaits approval: no listing for gcp product {product!r} plan {plan!r}; "
                  "create one (POST /v1/listings), then approve the entitlement in the Producer Portal")
    elif not listing.approve_entitlements:
        reason = (f"entitlement awaits approval: listing {listing.id} does not approve entitlements "
                  "automatically; approve it in the Producer Portal")
    else:
        context.adapter.approve_entitlement(event.contract_key)
        log.info("gcp_entitlement_approved", entitlement_id=event.contract_key, listing_id=listing.id, plan=plan)
        return
    # Its start is set when the ``created`` event of its activation is applied.
    context.contracts.hold(source=event.source, contract_key=event.contract_key, marketplace="gcp",
                           identifiers=event.identifiers, plan=plan, reason=reason, at=event.occurred_at)
    log.info("gcp_entitlement_held", entitlement_id=event.contract_key, reason=reason)


def _decide_plan_change(context: LifecycleContext, event: Any, new_plan: str) -> None:
    """Approve a pending plan change when the new plan has a listing, else reject it with a reason."""
    adapter = context.adapter
    listing = context.find_listing(event.identifiers, new_plan)
    if listing is None:
        product = event.identifiers.get("product_id", "")
        reason = f"plan {new_plan!r} of product {product!r} is not offered by this seller"
        adapter.reject_plan_change(event.contract_key, new_plan, _truncate(reason))
        log.info("gcp_plan_change_rejected", entitlement_id=event.contract_key, plan=new_plan, reason=reason)
    elif not listing.approve_entitlements:
        log.info("gcp_plan_change_held", entitlement_id=event.contract_key, plan=new_plan, listing_id=listing.id)
    else:
        adapter.approve_plan_change(event.contract_key, new_plan)
        log.info("gcp_plan_change_approved", entitlement_id=event.contract_key, plan=new_plan, listing_id=listing.id)


# --- reading the entitlement ----------------------------------------------------------------------

def _identifiers(event: Any, entitlement: Mapping[str, Any]) -> dict[str, str]:
    """Return the event's identifiers completed from the entitlement."""
    found = {
        "gcp_entitlement_id": event.contract_key,
        "gcp_account_id": _last_segment(entitlement.get("account")),
        "product_id": _text(entitlement.get("productExternalName")) or _text(entitlement.get("product")),
        "plan_id": _text(entitlement.get("plan")),
        "usage_reporting_id": _text(entitlement.get("usageReportingId")),
        "provider_id": _text(entitlement.get("provider")),
        "order_id": _text(entitlement.get("orderId")),
    }
    identifiers = dict(event.identifiers)
    identifiers.update({k: v for k, v in found.items() if v})
    return identifiers


def _cancel_time(event: Any, entitlement: Mapping[str, Any], state: str) -> datetime:
    """Return when billing stops (see the module docstring)."""
    if state != CANCELLED:
        return event.effective_at
    moments = [m for m in (parse_rfc3339(entitlement.get("updateTime")),
                           parse_rfc3339(entitlement.get("subscriptionEndTime"))) if m]
    return min(moments) if moments else event.effective_at



def _last_segment(value: Any) -> str:
    return _text(value).rsplit("/", 1)[-1]


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _truncate(reason: str) -> str:
    return reason.encode()[:_REASON_LIMIT].decode(errors="ignore")
