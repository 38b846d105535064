"""Azure SaaS steps around applying a contract event.

``before_apply`` re-reads the subscription from the SaaS Fulfillment API for every event (the
webhook's JWT authenticates Microsoft but does not cover the body, and short payloads such as
ChangeQuantity lack the offer and the buyer), and for ChangePlan / ChangeQuantity also the
operation itself, which is what the publisher must answer. The event is rebuilt from those
answers: offer, plan, quantity, buyer, subscription status (a Suspend or Reinstate becomes what the
subscription's current status says, so a late delivery never undoes a newer one), and for a
creation or a change the plan's included base quantities (listAvailablePlans).

``after_apply`` does what Microsoft waits for once the change is stored:

- a subscription still ``PendingFulfillmentStart`` is activated, but only when its contract got
  mapped to a billing subscription (the customer is billed from activation on; never activate
  what we cannot bill);
- a ChangePlan / ChangeQuantity operation is PATCHed ``Success``, or ``Failure`` when the new
  plan has no listing (Microsoft then keeps the old plan, and so does the contract).

Transient API errors propagate as ``TransientMarketplaceError`` so the job is retried; every
step is safe to repeat (activation and acknowledgement are decided from a fresh read).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Mapping

import structlog

from marketplaces.azure.wire import OperationSuperseded
from marketplaces.lifecycle import LifecycleContext

log = structlog.get_logger("marketsync.lifecycle.azure")

PENDING = "PendingFulfillmentStart"
SUBSCRIBED = "Subscribed"
SUSPENDED = "Suspended"  # takes no usage until reinstated (docs/marketplaces.md §3.6)
_OPEN_OPERATION = ("NotStarted", "InProgress")
_DEAD_OPERATION = ("Conflict", "Failed")  # superseded by a newer change, or already refused


def before_apply(context: LifecycleContext, event: Any) -> Any:
    """Return the event as the Fulfillment API states it (and decide the operation's answer)."""
    adapter = context.adapter
    subscription_id = event.identifiers.get("subscription_id") or event.contract_key
    subscription = _lower(adapter.get_subscription(subscription_id))
    extra = dict(event.extra)
    extra["subscription_status"] = str(subscription.get("saassubscriptionstatus") or "")
    plan = _text(subscription.get("planid")) or event.plan
    quantity = _quantity(subscription.get("quantity"), event.quantity)
    effective_at = event.effective_at

    if extra.get("ack_required"):
        operation = _lower(adapter.get_operation(subscription_id, str(extra["operation_id"])))
        status = _text(operation.get("status"))
        if status in _DEAD_OPERATION:
            log.info("azure_operation_skipped", subscription_id=subscription_id,
                     operation_id=extra["operation_id"], status=status)
            return replace(event, kind="ignored", extra=extra)
        plan = _text(operation.get("planid")) or plan
        quantity = _quantity(operation.get("quantity"), quantity)
        effective_at = _time(operation.get("timestamp")) or effective_at
        # An operation Microsoft already settled (silence for 10 s means accepted) needs no answer.
        extra["ack"] = "Success" if status in _OPEN_OPERATION else None

    identifiers = dict(event.identifiers)
    identifiers.update({k: v for k, v in {
        "offer_id": _text(subscription.get("offerid")),
        "plan_id": plan or "",
        "publisher_id": _text(subscription.get("publisherid")),
    }.items() if v})

    if event.action.lower() == "changeplan" and extra.get("ack") and context.find_listing(identifiers, plan) is None:
        # We cannot bill the new plan: refuse it, and the contract keeps its current plan.
        extra["ack"] = "Failure"
        identifiers.pop("plan_id", None)
        plan = None

    kind = event.kind
    if kind in ("suspended", "reinstated") and extra["subscription_status"] in (SUSPENDED, SUBSCRIBED):
        # Act on the subscription as it is now: a Suspend delivered after its Reinstate (webhooks
        # arrive in no guaranteed order) must not hold the contract's reports again.
        kind = "suspended" if extra["subscription_status"] == SUSPENDED else "reinstated"

    included = event.entitlements
    if kind in ("created", "modified") and plan:
        # A plan with included base quantities: only usage above them is reported (§3.9); a plan
        # change changes them from the change's instant.
        included = adapter.included_quantities({**identifiers, "subscription_id": subscription_id}, plan)

    buyer = _lower(subscription.get("beneficiary") or {}) or _lower(subscription.get("purchaser") or {})
    purchaser = _lower(subscription.get("purchaser") or {})
    email = _text(buyer.get("emailid")) or _text(purchaser.get("emailid"))
    return replace(
        event,
        kind=kind,
        identifiers=identifiers,
        plan=plan,
        quantity=quantity,
        effective_at=effective_at,
        buyer_name=_text(subscription.get("name")) or event.buyer_name or email,
        buyer_email=email or event.buyer_email,
        extra=extra,
        entitlements=included,
    )


def after_apply(context: LifecycleContext, event: Any, applied: Any) -> None:
    """Activate a mapped pending subscription; answer a ChangePlan / ChangeQuantity operation."""
    adapter = context.adapter
    subscription_id = event.identifiers.get("subscription_id") or event.contract_key
    mapping = context.contracts.mapping_status(applied.contract_id)

    if event.kind == "created" and event.extra.get("subscription_status") == PENDING:
        if mapping == "mapped":
            adapter.activate(subscription_id, event.plan or "", event.quantity)
            log.info("azure_subscription_activated", subscription_id=subscription_id,
                     contract_id=applied.contract_id, plan=event.plan)
        else:
            log.info("azure_activation_withheld", subscription_id=subscription_id,
                     contract_id=applied.contract_id, mapping=mapping)

    answer = event.extra.get("ack")
    if event.extra.get("ack_required") and answer:
        if answer == "Success" and mapping == "error":
            answer = "Failure"  # the billing core refused the change: do not let Microsoft bill it
        operation_id = str(event.extra["operation_id"])
        try:
            adapter.update_operation(subscription_id, operation_id, answer)
        except OperationSuperseded:
            # A newer change already settled this one; that newer webhook is applied on its own.
            log.warning("azure_operation_superseded", subscription_id=subscription_id,
                        operation_id=operation_id)
            return
        log.info("azure_operation_answered", subscription_id=subscription_id,
                 operation_id=operation_id, status=answer, contract_id=applied.contract_id)


def _lower(value: Mapping[str, Any]) -> dict[str, Any]:
    # Microsoft's payloads mix key casings (Id, PlanId, planId): read them case-insensitively.
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _quantity(value: Any, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


def _time(value: Any) -> datetime | None:
    text = _text(value)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
