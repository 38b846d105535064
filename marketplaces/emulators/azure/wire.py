"""The Azure wire format: subscription and operation records and their JSON, times, error answers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Response, jsonify


SUBSCRIBED = "Subscribed"
SUSPENDED = "Suspended"
UNSUBSCRIBED = "Unsubscribed"
PENDING = "PendingFulfillmentStart"


_NULL_TIME = "0001-01-01T00:00:00"
_MIXED_CASE_KEYS = {  # key casing seen in real deliveries (SaaS Accelerator issue #694)
    "id": "Id",
    "planId": "PlanId",
    "publisherId": "PublisherId",
    "offerId": "OfferId",
    "quantity": "Quantity",
}


class _Reject(Exception):
    """An API-level refusal: HTTP status, error code and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Subscription:
    id: str
    name: str
    publisher_id: str
    offer_id: str
    plan_id: str
    quantity: int | None
    plans: dict[str, list[str]]  # plan id -> metered dimension ids
    status: str
    app_id: str  # the publisher app allowed to meter it
    email: str
    created: datetime
    last_modified: datetime
    term_start: datetime
    landing_token: str
    landing_token_expires: datetime
    canceled_at: datetime | None = None
    # The buyer's Azure subscription the SaaS subscription bills to (usageEvents' azureSubscriptionId).
    azure_subscription_id: str = ""
    # Plan id -> the units of each dimension its base fee includes per month (listAvailablePlans'
    # meteredQuantityIncluded; docs/marketplaces.md §3.9).
    included: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Operation:
    id: str
    subscription_id: str
    action: str
    plan_id: str
    quantity: int | None
    status: str
    source: str
    time: datetime
    previous: tuple[str, int | None] | None = None  # plan and quantity to restore on Failure
    acknowledged: str | None = None  # "Success" / "Failure" once the publisher PATCHed it
    payload: dict[str, Any] = field(default_factory=dict)


# Wire helpers ------------------------------------------------------------------------------


def plans_json(sub: _Subscription) -> dict[str, Any]:
    """Return listAvailablePlans: the offer's plans with their metering dimensions and included quantities."""
    plans = []
    for plan_id, dimensions in sorted(sub.plans.items()):
        included = sub.included.get(plan_id, {})
        plans.append({
            "planId": plan_id, "displayName": plan_id, "isPrivate": False, "description": "", "minQuantity": None,
            "maxQuantity": None, "hasFreeTrials": False, "isPricePerSeat": False, "isStopSell": False,
            "market": "US",
            "planComponents": {
                "recurrentBillingTerms": [{
                    "currency": "USD", "price": 0.0, "termUnit": "P1M", "termDescription": "",
                    "meteredQuantityIncluded": [{"dimensionId": name, "units": str(units)}
                                                for name, units in sorted(included.items())],
                }],
                "meteringDimensions": [{"id": name, "currency": "USD", "pricePerUnit": 0.0,
                                        "unitOfMeasure": "unit", "displayName": name} for name in dimensions],
            },
        })
    return {"plans": plans}


def subscription_json(sub: _Subscription) -> dict[str, Any]:
    """Return the SaaS Fulfillment v2 subscription object."""
    party = {"emailId": sub.email, "objectId": str(uuid.uuid5(uuid.NAMESPACE_URL, sub.email)),
             "tenantId": str(uuid.uuid5(uuid.NAMESPACE_DNS, sub.email.split("@")[-1])), "puid": None}
    return {
        "id": sub.id,
        "name": sub.name,
        "publisherId": sub.publisher_id,
        "offerId": sub.offer_id,
        "planId": sub.plan_id,
        "quantity": sub.quantity,
        "beneficiary": party,
        "purchaser": dict(party),
        "term": {
            "startDate": _wire_time(sub.term_start),
            "endDate": _wire_time(sub.term_start + timedelta(days=30)),
            "termUnit": "P1M",
            "chargeDuration": None,
        },
        "autoRenew": True,
        "allowedCustomerOperations": ["Delete", "Update", "Read"],
        "sessionMode": "None",
        "isFreeTrial": False,
        "isTest": True,
        "sandboxType": "None",
        "saasSubscriptionStatus": sub.status,
        "created": _wire_time(sub.created, fraction=True),
        "lastModified": _wire_time(sub.last_modified, fraction=True),
    }


def operation_json(op: _Operation) -> dict[str, Any]:
    """Return the Operations API object."""
    return {
        "id": op.id,
        "activityId": op.id,
        "subscriptionId": op.subscription_id,
        "offerId": op.payload.get("offerId") or op.payload.get("OfferId"),
        "publisherId": op.payload.get("publisherId") or op.payload.get("PublisherId"),
        "planId": op.plan_id,
        "quantity": op.quantity,
        "action": op.action,
        "timeStamp": _wire_time(op.time, fraction=True),
        "status": op.status,
        "operationRequestSource": op.source,
        "errorStatusCode": "",
        "errorMessage": "",
    }


def _echo(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event.get(k) for k in ("resourceId", "quantity", "dimension", "effectiveStartTime", "planId")}


def _failure(code: str, message: str, event: dict[str, Any], target: str | None = None) -> dict[str, Any]:
    return {
        "status": code,
        "messageTime": _NULL_TIME,
        "error": {
            "message": "One or more errors have occurred.",
            "target": "usageEventRequest",
            "details": [{"message": message, "target": target or code, "code": code}],
            "code": code,
        },
        **(_echo(event) if isinstance(event, dict) else {}),
    }


def _wire_time(moment: datetime, fraction: bool = False) -> str:
    moment = moment.astimezone(timezone.utc)
    if fraction:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"  # Azure prints 7 digits
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_time(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return int(float(value))


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"message": message, "code": code}), status
