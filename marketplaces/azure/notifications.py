"""The SaaS fulfillment webhook: a bearer JWT that authenticates Microsoft (not the body), and a
payload with mixed key casings, normalized to a ``ContractNotification``."""
from __future__ import annotations

import json
from typing import Any, Mapping

from marketplaces.base import (
    ContractNotification,
    Marketplace,
    MalformedNotification,
    NotificationKind,
    UnverifiedNotification,
)
from marketplaces.azure.wire import _ACK_ACTIONS, _ACTION_KINDS, _parse_time, _text


class Notifications:
    """The webhook part of ``AzureMarketplace`` (needs ``webhook_verifier``)."""

    def parse_notification(
        self, headers: Mapping[str, str], body: bytes
    ) -> ContractNotification:
        """Verify the webhook's bearer JWT and normalize its payload.

        The JWT authenticates the sender but does not cover the body, so a handler must
        confirm the payload with ``get_operation`` before acting on it (this method stays
        pure: no calls besides fetching signing keys). ``extra`` carries ``operation_id`` and
        ``ack_required`` (ChangePlan/ChangeQuantity must be answered with
        ``update_operation``).
        """
        if self.webhook_verifier is None:
            raise UnverifiedNotification("no webhook verifier configured")
        token = _bearer_token(headers)
        claims = self.webhook_verifier.verify(token)
        payload = _parse_payload(body)
        return _notification(payload, claims)


def _bearer_token(headers: Mapping[str, str]) -> str:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnverifiedNotification("missing bearer token")
    return token.strip()


def _parse_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedNotification("body is not JSON") from None
    if not isinstance(payload, dict):
        raise MalformedNotification("body is not a JSON object")
    # Microsoft's payloads mix `Id`/`PlanId` with camelCase keys: read keys case-insensitively.
    return {str(k).lower(): v for k, v in payload.items()}


def _notification(payload: Mapping[str, Any], claims: Mapping[str, Any]) -> ContractNotification:
    operation_id = _text(payload.get("id"))
    if not operation_id:
        raise MalformedNotification("missing operation id", field="id")
    action = _text(payload.get("action"))
    if not action:
        raise MalformedNotification("missing action", field="action")
    subscription = payload.get("subscription")
    subscription = (
        {str(k).lower(): v for k, v in subscription.items()} if isinstance(subscription, dict) else {}
    )
    subscription_id = _text(payload.get("subscriptionid")) or _text(subscription.get("id"))
    if not subscription_id:
        raise MalformedNotification("missing subscriptionId", field="subscriptionId")
    plan = _text(payload.get("planid")) or _text(subscription.get("planid"))
    identifiers = {
        "subscription_id": subscription_id,
        "resource_id": subscription_id,
        "offer_id": _text(payload.get("offerid")) or _text(subscription.get("offerid")),
        "plan_id": plan,
        "publisher_id": _text(payload.get("publisherid")) or _text(subscription.get("publisherid")),
    }
    timestamp = _text(payload.get("timestamp"))
    try:
        effective_at = _parse_time(timestamp) if timestamp else None
    except ValueError:
        raise MalformedNotification("timeStamp is not an ISO-8601 time", field="timeStamp") from None
    kind = _ACTION_KINDS.get(action.lower(), NotificationKind.IGNORED)
    extra: dict[str, Any] = {
        "operation_id": operation_id,
        "activity_id": _text(payload.get("activityid")),
        "status": _text(payload.get("status")),
        "operation_request_source": _text(payload.get("operationrequestsource")),
        "ack_required": action.lower() in _ACK_ACTIONS,
        # The JWT does not cover the body: confirm with get_operation before acting.
        "confirm_with_get_operation": True,
        "token_tenant_id": claims.get("tid"),
    }
    if subscription.get("saassubscriptionstatus"):
        extra["subscription_status"] = subscription["saassubscriptionstatus"]
    return ContractNotification(
        marketplace=Marketplace.AZURE,
        delivery_id=operation_id,
        kind=kind,
        action=action,
        identifiers={k: v for k, v in identifiers.items() if v},
        plan=plan or None,
        quantity=_quantity(payload.get("quantity", subscription.get("quantity"))),
        effective_at=effective_at,
        extra=extra,
    )


def _quantity(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise MalformedNotification("quantity is not a number", field="quantity") from None
