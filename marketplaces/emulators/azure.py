"""An Azure commercial marketplace emulator: metering, SaaS Fulfillment v2, Entra tokens, webhooks.

It speaks the real wire protocol under ``/api`` (``?api-version=2018-08-31``), so
``AzureMarketplace`` runs unmodified against it. It issues its own bearer tokens from an
Entra-like token endpoint (``POST /{tenant}/oauth2/v2.0/token``, client-credentials grant),
signs them and its webhooks with an RSA key generated when the app is built, and publishes that
key as a JWKS (``GET /_emulator/jwks``, also ``/{tenant}/discovery/v2.0/keys`` behind an
openid-configuration at ``/{tenant}/v2.0/.well-known/openid-configuration``).

Metering rules (reference §2.4): first write wins per (resourceId, dimension, calendar hour),
25 events per batch, quantity > 0, a 24 h window on the emulator's clock, no future times,
usage only for ``Subscribed`` subscriptions, except that an ``Unsubscribed`` one still
accepts times before its cancellation. Token lifetimes follow the wall clock (so a verifier
in the same process accepts them); every marketplace rule follows the settable clock.

Control API (``/_emulator/``)::

    POST reset                          forget everything but the signing key
    GET|POST faults                     Faults fields as JSON
    POST clock                          {"now": ISO | null} or {"advance_seconds": n}
    POST receiver                       {"url": "http://.../webhooks/azure"}
    GET  usage                          {"totals": [...], "events": [...]} accepted usage
    POST subscriptions                  create {offer_id, plan_id, dimensions, quantity,
                                        auto_activate, id, name, plans, app_id}
    GET  subscriptions/<id>             the subscription, its operations, its landing token
    POST subscriptions/<id>/plan        {"plan_id", "dimensions"?}  -> ChangePlan webhook
    POST subscriptions/<id>/quantity    {"quantity"}                -> ChangeQuantity webhook
    POST subscriptions/<id>/suspend | reinstate | renew | unsubscribe ({"at": ISO}?)
    GET  operations/<op_id>             an operation with ``acknowledged`` (the publisher's PATCH)
    GET  webhooks                       every delivery attempt
    POST webhooks/<op_id>/redeliver     send an operation's webhook again
    POST tokens                         {"kind": "webhook"|"api", "claims": {...}, "ttl": s}
    GET  jwks, .well-known/openid-configuration
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Blueprint, Flask, Response, current_app, jsonify, request

from marketplaces.azure import (
    API_VERSION,
    MARKETPLACE_APP_ID,
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_TENANT_ID,
)
from marketplaces.emulators.server import Faults

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


class AzureEmulatorState:
    """Everything one emulator instance knows, behind one lock."""

    def __init__(
        self,
        *,
        tenant_id: str = SANDBOX_TENANT_ID,
        client_id: str = SANDBOX_CLIENT_ID,
        client_secret: str | None = SANDBOX_CLIENT_SECRET,
        publisher_id: str = "marketsync-sandbox",
        usage_window_seconds: float = 24 * 3600,
        batch_limit: int = 25,
        page_size: int = 100,
        token_ttl: int = 3600,
        landing_token_ttl: float = 24 * 3600,
        receiver_url: str | None = None,
        now: datetime | str | None = None,
        webhook_key_style: str = "camel",
        webhook_timeout: float = 10.0,
        seed: int | None = None,
    ):
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret or None  # None: any secret is accepted
        self.publisher_id = publisher_id
        self.usage_window = timedelta(seconds=usage_window_seconds)
        self.batch_limit = batch_limit
        self.page_size = page_size
        self.token_ttl = token_ttl
        self.landing_token_ttl = timedelta(seconds=landing_token_ttl)
        self.webhook_key_style = webhook_key_style
        self.webhook_timeout = webhook_timeout
        self._initial = {"receiver_url": receiver_url, "now": _as_time(now)}
        self.lock = threading.RLock()
        self.faults = Faults(seed=seed)
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        self.reset()

    def reset(self) -> None:
        """Forget subscriptions, usage, operations, deliveries, faults and clock settings."""
        with self.lock:
            self.receiver_url: str | None = self._initial["receiver_url"]
            self.fixed_now: datetime | None = self._initial["now"]
            self.subscriptions: dict[str, _Subscription] = {}
            self.operations: dict[str, _Operation] = {}
            self.usage: dict[tuple[str, str, datetime], dict[str, Any]] = {}
            self.deliveries: list[dict[str, Any]] = []
            self.faults.reset()

    def now(self) -> datetime:
        """Return the emulator's clock (fixed when set, else the wall clock)."""
        with self.lock:
            return self.fixed_now or datetime.now(timezone.utc)

    # Keys and tokens ---------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        """Return the public signing key as a JWKS document."""
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self._private_key.public_key(), as_dict=True)
        public.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [public]}

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign ``claims`` with the emulator's key (RS256, with its kid)."""
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers={"kid": self.kid})

    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"

    def webhook_claims(self, ttl: int | None = None, **overrides: Any) -> dict[str, Any]:
        """Return the claims Microsoft puts in a webhook's bearer token (v1 shape)."""
        issued = int(time.time())
        caller = str(uuid.uuid4())
        claims = {
            "aud": self.client_id,
            "iss": self.issuer(),
            "iat": issued,
            "nbf": issued,
            "exp": issued + (ttl or self.token_ttl),
            "appid": MARKETPLACE_APP_ID,
            "appidacr": "2",
            "tid": self.tenant_id,
            "oid": caller,
            "sub": caller,
            "ver": "1.0",
        }
        claims.update(overrides)
        return claims

    def api_claims(self, ttl: int | None = None, **overrides: Any) -> dict[str, Any]:
        """Return the claims of an access token for the Marketplace API issued to the publisher."""
        issued = int(time.time())
        claims = {
            "aud": MARKETPLACE_APP_ID,
            "iss": self.issuer(),
            "iat": issued,
            "nbf": issued,
            "exp": issued + (ttl or self.token_ttl),
            "appid": self.client_id,
            "appidacr": "1",
            "tid": self.tenant_id,
            "ver": "1.0",
        }
        claims.update(overrides)
        return claims

    def authenticate(self, header: str | None) -> dict[str, Any]:
        """Return the claims of a valid API bearer token or raise a 403 ``_Reject``."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Reject(403, "Forbidden", "A bearer token is required.")
        try:
            claims = jwt.decode(
                token.strip(),
                self._private_key.public_key(),
                algorithms=["RS256"],
                audience=MARKETPLACE_APP_ID,
                options={"require": ["exp", "aud", "tid", "appid"]},
            )
        except jwt.PyJWTError as exc:
            raise _Reject(403, "Forbidden", f"The bearer token is not valid: {exc}") from None
        if claims["tid"] != self.tenant_id or claims["appid"] != self.client_id:
            raise _Reject(
                403, "Forbidden", "The offer is published with a different Entra app id."
            )
        return claims

    # Metering ----------------------------------------------------------------------------

    def meter(self, event: Any, app_id: str) -> tuple[str, dict[str, Any]]:
        """Apply the metering rules to one event; return (status, result body)."""
        now = self.now()
        if not isinstance(event, dict):
            return "BadArgument", _failure("BadArgument", "The usage event must be an object.", {})
        for name in ("resourceId", "quantity", "dimension", "effectiveStartTime", "planId"):
            if event.get(name) in (None, ""):
                return "BadArgument", _failure("BadArgument", f"The {name} is required.", event, name)
        quantity = event["quantity"]
        if isinstance(quantity, bool) or not isinstance(quantity, (int, float)):
            return "BadArgument", _failure("BadArgument", "The quantity must be a number.", event, "quantity")
        try:
            moment = _as_time(str(event["effectiveStartTime"]))
        except ValueError:
            return "BadArgument", _failure(
                "BadArgument", "The effectiveStartTime is not a valid time.", event, "effectiveStartTime"
            )
        if quantity <= 0:
            return "InvalidQuantity", _failure(
                "InvalidQuantity", "The quantity must be greater than 0.", event, "quantity"
            )
        if moment > now:
            return "BadArgument", _failure(
                "BadArgument", "The effectiveStartTime is in the future.", event, "effectiveStartTime"
            )
        if moment < now - self.usage_window:
            return "Expired", _failure(
                "Expired", "The effectiveStartTime is outside the allowed window.", event
            )
        hour = moment.replace(minute=0, second=0, microsecond=0)
        key = (str(event["resourceId"]), str(event["dimension"]), hour)
        with self.lock:
            sub = self.subscriptions.get(key[0])
            if sub is None:
                return "ResourceNotFound", _failure("ResourceNotFound", "Unknown resourceId.", event)
            if sub.app_id != app_id:
                return "ResourceNotAuthorized", _failure(
                    "ResourceNotAuthorized", "The resource belongs to another publisher app.", event
                )
            # Hours before a cancellation may still be reported (inside the window).
            if not (
                sub.status == SUBSCRIBED
                or (sub.status == UNSUBSCRIBED and sub.canceled_at and moment < sub.canceled_at)
            ):
                return "ResourceNotActive", _failure(
                    "ResourceNotActive", f"The subscription is {sub.status}.", event
                )
            if event["planId"] != sub.plan_id:
                return "InvalidDimension", _failure(
                    "InvalidDimension", "The planId is not the subscription's plan.", event, "planId"
                )
            if event["dimension"] not in sub.plans.get(sub.plan_id, []):
                return "InvalidDimension", _failure(
                    "InvalidDimension", "The dimension is not defined on the plan.", event, "dimension"
                )
            accepted = self.usage.get(key)
            if accepted is not None:
                # Azure accepts one event per resource/dimension/hour: the first one stands.
                return "Duplicate", {
                    "status": "Duplicate",
                    "messageTime": _NULL_TIME,
                    "error": {
                        "additionalInfo": {"acceptedMessage": {**accepted, "status": "Duplicate"}},
                        "message": "This usage event already exist.",
                        "code": "Conflict",
                    },
                    **_echo(event),
                }
            accepted = {
                "usageEventId": str(uuid.uuid4()),
                "status": "Accepted",
                "messageTime": _wire_time(now, fraction=True),
                **_echo(event),
                "quantity": float(quantity),
            }
            self.usage[key] = accepted
            return "Accepted", dict(accepted)

    def usage_report(self) -> dict[str, Any]:
        """Return accepted usage: totals per (resource, dimension, hour) and the raw events."""
        with self.lock:
            totals = [
                {
                    "resource_id": resource,
                    "dimension": dimension,
                    "hour": _wire_time(hour),
                    "quantity": event["quantity"],
                }
                for (resource, dimension, hour), event in sorted(self.usage.items())
            ]
            return {"totals": totals, "events": [dict(e) for e in self.usage.values()]}

    # Subscriptions -----------------------------------------------------------------------

    def create_subscription(self, body: dict[str, Any]) -> tuple[_Subscription, _Operation | None]:
        """Create a subscription; with auto-activation it is Subscribed at once (and notified)."""
        now = self.now()
        plan_id = str(body.get("plan_id") or "payg")
        plans = {str(k): [str(d) for d in v] for k, v in (body.get("plans") or {}).items()}
        plans.setdefault(plan_id, [str(d) for d in body.get("dimensions") or ["usage_fee"]])
        sub_id = str(body.get("id") or uuid.uuid4())
        auto = bool(body.get("auto_activate", True))
        sub = _Subscription(
            id=sub_id,
            name=str(body.get("name") or f"Sandbox subscription {sub_id[:8]}"),
            publisher_id=str(body.get("publisher_id") or self.publisher_id),
            offer_id=str(body.get("offer_id") or "marketsync-sandbox-offer"),
            plan_id=plan_id,
            quantity=_int_or_none(body.get("quantity")),
            plans=plans,
            status=SUBSCRIBED if auto else PENDING,
            app_id=str(body.get("app_id") or self.client_id),
            email=str(body.get("email") or "buyer@sandbox.example"),
            created=now,
            last_modified=now,
            term_start=now.replace(hour=0, minute=0, second=0, microsecond=0),
            landing_token=secrets.token_urlsafe(24),
            landing_token_expires=now + self.landing_token_ttl,
        )
        with self.lock:
            if sub_id in self.subscriptions:
                raise _Reject(409, "Conflict", f"subscription {sub_id} already exists")
            self.subscriptions[sub_id] = sub
            operation = self._operation(sub, "Subscribe", "Succeeded", "Azure") if auto else None
        return sub, operation

    def subscription(self, sub_id: str) -> _Subscription:
        with self.lock:
            sub = self.subscriptions.get(sub_id)
        if sub is None:
            raise _Reject(404, "NotFound", f"subscription {sub_id} not found")
        return sub

    def change(
        self, sub_id: str, *, plan_id: str | None = None, quantity: int | None = None,
        dimensions: list[str] | None = None, source: str = "Azure",
    ) -> _Operation:
        """Change plan or quantity now; the operation stays InProgress until acknowledged."""
        with self.lock:
            sub = self.subscription(sub_id)
            if sub.status == UNSUBSCRIBED:
                raise _Reject(404, "NotFound", "the subscription is Unsubscribed")
            if (plan_id is None) == (quantity is None):
                raise _Reject(400, "BadArgument", "change either planId or quantity, not both")
            previous = (sub.plan_id, sub.quantity)
            # A newer change supersedes pending ones: acknowledging those answers 409.
            for op in self.operations.values():
                if op.subscription_id == sub_id and op.action in ("ChangePlan", "ChangeQuantity") \
                        and op.status == "InProgress":
                    op.status = "Conflict"
            if plan_id is not None:
                if dimensions is not None:
                    sub.plans[plan_id] = [str(d) for d in dimensions]
                sub.plans.setdefault(plan_id, list(sub.plans.get(sub.plan_id, [])))
                sub.plan_id, action = plan_id, "ChangePlan"
            else:
                sub.quantity, action = quantity, "ChangeQuantity"
            sub.last_modified = self.now()
            operation = self._operation(sub, action, "InProgress", source)
            operation.previous = previous
            return operation

    def transition(self, sub_id: str, action: str, at: datetime | None = None,
                   source: str = "Azure") -> _Operation:
        """Apply Suspend, Reinstate, Renew or Unsubscribe and return its operation."""
        allowed = {
            "Suspend": ({SUBSCRIBED}, SUSPENDED, "Succeeded"),
            "Reinstate": ({SUSPENDED}, SUBSCRIBED, "InProgress"),
            "Renew": ({SUBSCRIBED}, SUBSCRIBED, "Succeeded"),
            "Unsubscribe": ({PENDING, SUBSCRIBED, SUSPENDED}, UNSUBSCRIBED, "Succeeded"),
        }
        sources, target, op_status = allowed[action]
        with self.lock:
            sub = self.subscription(sub_id)
            if sub.status not in sources:
                raise _Reject(409, "Conflict", f"cannot {action} a {sub.status} subscription")
            sub.status = target
            now = self.now()
            sub.last_modified = now
            if action == "Unsubscribe":
                sub.canceled_at = at or now
            if action == "Renew":
                sub.term_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
            return self._operation(sub, action, op_status, source, at=at)

    def _operation(self, sub: _Subscription, action: str, status: str, source: str,
                   at: datetime | None = None) -> _Operation:
        op = _Operation(
            id=str(uuid.uuid4()),
            subscription_id=sub.id,
            action=action,
            plan_id=sub.plan_id,
            quantity=sub.quantity,
            status=status,
            source=source,
            time=at or self.now(),
        )
        op.payload = self._webhook_payload(op, sub)
        self.operations[op.id] = op
        return op

    def acknowledge(self, sub_id: str, op_id: str, status: Any) -> None:
        """Record the publisher's PATCH of an operation (Failure undoes a change)."""
        if status not in ("Success", "Failure"):
            raise _Reject(400, "BadArgument", "status must be Success or Failure")
        with self.lock:
            op = self.operations.get(op_id)
            if op is None or op.subscription_id != sub_id:
                raise _Reject(404, "NotFound", f"operation {op_id} not found")
            if op.acknowledged == status:
                return  # the same answer again is harmless
            if op.status == "Conflict":
                raise _Reject(409, "Conflict", "a newer operation already fulfilled this one")
            if op.status != "InProgress":
                raise _Reject(409, "Conflict", f"the operation is {op.status}")
            op.acknowledged = status
            op.status = "Succeeded" if status == "Success" else "Failed"
            if status == "Failure" and op.previous is not None:
                sub = self.subscriptions[sub_id]
                sub.plan_id, sub.quantity = op.previous
                sub.last_modified = self.now()

    # Webhooks ----------------------------------------------------------------------------

    def _webhook_payload(self, op: _Operation, sub: _Subscription) -> dict[str, Any]:
        payload = {
            "id": op.id,
            "activityId": op.id,
            "publisherId": sub.publisher_id,
            "offerId": sub.offer_id,
            "planId": op.plan_id,
            "quantity": op.quantity,
            "subscriptionId": sub.id,
            "timeStamp": _wire_time(op.time, fraction=True),
            "action": op.action,
            "status": op.status,
            "operationRequestSource": op.source,
            "subscription": subscription_json(sub),
            "purchaseToken": None,
        }
        if self.webhook_key_style == "mixed":
            payload = {_MIXED_CASE_KEYS.get(k, k): v for k, v in payload.items()}
        return payload

    def deliver(self, op: _Operation) -> dict[str, Any]:
        """POST the operation's webhook, signed, to the receiver; record and return the attempt."""
        with self.lock:
            url = self.receiver_url
        record: dict[str, Any] = {
            "operation_id": op.id,
            "action": op.action,
            "url": url,
            "payload": op.payload,
        }
        if url:
            token = self.sign(self.webhook_claims())
            try:
                response = requests.post(
                    url,
                    json=op.payload,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=self.webhook_timeout,
                )
                record["status_code"] = response.status_code
            except requests.RequestException as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
        else:
            record["error"] = "no receiver configured"
        with self.lock:
            self.deliveries.append(record)
        return record


# Wire helpers ------------------------------------------------------------------------------


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


def _state() -> AzureEmulatorState:
    return current_app.extensions["azure_emulator"]


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if body is None and request.get_data():
        raise _Reject(400, "BadRequest", "The request body is not JSON.")
    return body if isinstance(body, dict) else {}


# Marketplace API ---------------------------------------------------------------------------

api = Blueprint("azure_api", __name__, url_prefix="/api")


@api.before_request
def _guard() -> Any:
    state = _state()
    fault = state.faults.draw()
    if fault == "outage":
        return _error(503, "ServiceUnavailable", "The service is unavailable.")
    if fault == "error":
        return _error(500, "InternalServerError", "An internal error occurred.")
    if fault == "throttle":
        response, status = _error(429, "TooManyRequests", "Too many requests.")
        response.headers["Retry-After"] = "1"
        return response, status
    request.environ["azure.claims"] = state.authenticate(request.headers.get("Authorization"))
    if request.args.get("api-version") != API_VERSION:
        raise _Reject(400, "BadRequest", "The api-version query parameter is missing or unsupported.")
    return None


def _app_id() -> str:
    return request.environ["azure.claims"]["appid"]


@api.post("/usageEvent")
def usage_event() -> Any:
    status, result = _state().meter(_json_body(), _app_id())
    if status == "Accepted":
        return jsonify(result)
    if status == "Duplicate":
        return jsonify(result["error"]), 409
    return jsonify(result["error"]), 400


@api.post("/batchUsageEvent")
def batch_usage_event() -> Any:
    state = _state()
    events = _json_body().get("request")
    if not isinstance(events, list) or not events:
        raise _Reject(400, "BadArgument", "The request must carry a non-empty list of events.")
    if len(events) > state.batch_limit:
        raise _Reject(400, "BadArgument", f"A batch holds at most {state.batch_limit} events.")
    app_id = _app_id()
    results = [state.meter(event, app_id)[1] for event in events]
    return jsonify({"count": len(results), "result": results})


def _operation_location(op: _Operation) -> str:
    return (
        f"{request.host_url.rstrip('/')}/api/saas/subscriptions/{op.subscription_id}"
        f"/operations/{op.id}?api-version={API_VERSION}"
    )


def _accepted(op: _Operation) -> Any:
    _state().deliver(op)
    response = Response(status=202)
    response.headers["Operation-Location"] = _operation_location(op)
    return response


@api.post("/saas/subscriptions/resolve")
def resolve() -> Any:
    state = _state()
    token = request.headers.get("x-ms-marketplace-token", "")
    with state.lock:
        sub = next((s for s in state.subscriptions.values() if token and s.landing_token == token), None)
        if sub is None or state.now() > sub.landing_token_expires:
            raise _Reject(400, "BadArgument", "The marketplace token is missing, invalid or expired.")
        return jsonify({
            "id": sub.id,
            "subscriptionName": sub.name,
            "offerId": sub.offer_id,
            "planId": sub.plan_id,
            "quantity": sub.quantity,
            "subscription": subscription_json(sub),
        })


@api.post("/saas/subscriptions/<sub_id>/activate")
def activate(sub_id: str) -> Any:
    state = _state()
    body = _json_body()
    with state.lock:
        sub = state.subscription(sub_id)
        if sub.status == UNSUBSCRIBED:
            raise _Reject(404, "NotFound", "The subscription is Unsubscribed.")
        if sub.status in (SUBSCRIBED, SUSPENDED):
            raise _Reject(400, "BadArgument", f"The subscription is already {sub.status}.")
        if body.get("planId") != sub.plan_id:
            raise _Reject(400, "BadArgument", "The planId does not match the purchase.")
        quantity = _int_or_none(body.get("quantity"))
        if quantity is not None and sub.quantity is not None and quantity != sub.quantity:
            raise _Reject(400, "BadArgument", "The quantity does not match the purchase.")
        sub.status = SUBSCRIBED
        sub.last_modified = state.now()
    return Response(status=200)


@api.get("/saas/subscriptions")
def list_subscriptions() -> Any:
    state = _state()
    try:
        offset = int(request.args.get("continuationToken") or 0)
    except ValueError:
        raise _Reject(400, "BadArgument", "Invalid continuationToken.") from None
    with state.lock:
        subs = list(state.subscriptions.values())
    page = subs[offset : offset + state.page_size]
    next_link = ""
    if offset + state.page_size < len(subs):
        next_link = (
            f"{request.host_url.rstrip('/')}/api/saas/subscriptions?"
            f"continuationToken={offset + state.page_size}&api-version={API_VERSION}"
        )
    return jsonify({"subscriptions": [subscription_json(s) for s in page], "@nextLink": next_link})


@api.get("/saas/subscriptions/<sub_id>")
def get_subscription(sub_id: str) -> Any:
    return jsonify(subscription_json(_state().subscription(sub_id)))


@api.patch("/saas/subscriptions/<sub_id>")
def patch_subscription(sub_id: str) -> Any:
    body = _json_body()
    plan_id = body.get("planId")
    quantity = _int_or_none(body.get("quantity"))
    op = _state().change(sub_id, plan_id=plan_id, quantity=quantity, source="Partner")
    return _accepted(op)


@api.delete("/saas/subscriptions/<sub_id>")
def delete_subscription(sub_id: str) -> Any:
    state = _state()
    if state.subscription(sub_id).status == UNSUBSCRIBED:
        raise _Reject(404, "NotFound", "The subscription is already Unsubscribed.")
    return _accepted(state.transition(sub_id, "Unsubscribe", source="Partner"))


@api.get("/saas/subscriptions/<sub_id>/operations")
def list_operations(sub_id: str) -> Any:
    state = _state()
    state.subscription(sub_id)
    with state.lock:
        pending = [
            operation_json(op)
            for op in state.operations.values()
            if op.subscription_id == sub_id and op.status in ("NotStarted", "InProgress")
        ]
    return jsonify({"operations": pending})


@api.get("/saas/subscriptions/<sub_id>/operations/<op_id>")
def get_operation(sub_id: str, op_id: str) -> Any:
    state = _state()
    with state.lock:
        op = state.operations.get(op_id)
        if op is None or op.subscription_id != sub_id:
            raise _Reject(404, "NotFound", f"operation {op_id} not found")
        return jsonify(operation_json(op))


@api.patch("/saas/subscriptions/<sub_id>/operations/<op_id>")
def update_operation(sub_id: str, op_id: str) -> Any:
    _state().acknowledge(sub_id, op_id, _json_body().get("status"))
    return Response(status=200)


# Entra-like identity endpoints -------------------------------------------------------------

identity = Blueprint("azure_identity", __name__)


def _check_tenant(tenant: str) -> None:
    if tenant != _state().tenant_id:
        raise _Reject(400, "invalid_tenant", f"tenant {tenant!r} is not known here")


@identity.get("/<tenant>/v2.0/.well-known/openid-configuration")
@identity.get("/_emulator/.well-known/openid-configuration", defaults={"tenant": None})
def openid_configuration(tenant: str | None) -> Any:
    state = _state()
    if tenant is not None:
        _check_tenant(tenant)
    root = request.host_url.rstrip("/")
    return jsonify({
        "issuer": f"{root}/{state.tenant_id}/v2.0",
        "token_endpoint": f"{root}/{state.tenant_id}/oauth2/v2.0/token",
        "jwks_uri": f"{root}/_emulator/jwks",
        "id_token_signing_alg_values_supported": ["RS256"],
    })


@identity.get("/_emulator/jwks")
@identity.get("/<tenant>/discovery/v2.0/keys")
def jwks(tenant: str | None = None) -> Any:
    if tenant is not None:
        _check_tenant(tenant)
    return jsonify(_state().jwks())


@identity.post("/<tenant>/oauth2/v2.0/token")
@identity.post("/<tenant>/oauth2/token")
def token(tenant: str) -> Any:
    state = _state()
    _check_tenant(tenant)
    form = request.form
    if form.get("grant_type") != "client_credentials":
        return jsonify({"error": "unsupported_grant_type"}), 400
    if form.get("client_id") != state.client_id or (
        state.client_secret is not None and form.get("client_secret") != state.client_secret
    ):
        return jsonify({"error": "invalid_client", "error_description": "bad client credentials"}), 401
    wanted = form.get("scope") or form.get("resource") or ""
    if MARKETPLACE_APP_ID not in wanted:
        return jsonify({"error": "invalid_scope", "error_description": "unknown resource"}), 400
    return jsonify({
        "token_type": "Bearer",
        "expires_in": state.token_ttl,
        "ext_expires_in": state.token_ttl,
        "access_token": state.sign(state.api_claims()),
    })


# Control API -------------------------------------------------------------------------------

control = Blueprint("azure_control", __name__, url_prefix="/_emulator")


@control.post("/reset")
def reset() -> Any:
    _state().reset()
    return jsonify({"ok": True})


@control.route("/faults", methods=["GET", "POST"])
def faults() -> Any:
    state = _state()
    if request.method == "POST":
        try:
            state.faults.update(**_json_body())
        except KeyError as exc:
            raise _Reject(400, "BadArgument", f"unknown fault {exc.args[0]!r}") from None
    return jsonify(state.faults.as_dict())


@control.post("/clock")
def clock() -> Any:
    state = _state()
    body = _json_body()
    with state.lock:
        if "advance_seconds" in body:
            state.fixed_now = state.now() + timedelta(seconds=float(body["advance_seconds"]))
        elif "now" in body:
            state.fixed_now = _as_time(body["now"])
        return jsonify({"now": _wire_time(state.now()), "fixed": state.fixed_now is not None})


@control.post("/receiver")
def receiver() -> Any:
    state = _state()
    with state.lock:
        state.receiver_url = _json_body().get("url") or None
        return jsonify({"url": state.receiver_url})


@control.get("/usage")
def usage() -> Any:
    return jsonify(_state().usage_report())


def _control_subscription(sub: _Subscription) -> dict[str, Any]:
    state = _state()
    with state.lock:
        ops = [
            {**operation_json(op), "acknowledged": op.acknowledged}
            for op in state.operations.values()
            if op.subscription_id == sub.id
        ]
        return {
            "subscription": subscription_json(sub),
            "plans": sub.plans,
            "canceled_at": _wire_time(sub.canceled_at) if sub.canceled_at else None,
            "marketplace_token": sub.landing_token,
            "operations": ops,
        }


@control.post("/subscriptions")
def create_subscription() -> Any:
    state = _state()
    sub, op = state.create_subscription(_json_body())
    body = _control_subscription(sub)
    body["operation_id"] = op.id if op else None
    body["webhook"] = state.deliver(op) if op else None
    return jsonify(body), 201


@control.get("/subscriptions/<sub_id>")
def show_subscription(sub_id: str) -> Any:
    return jsonify(_control_subscription(_state().subscription(sub_id)))


def _notified(op: _Operation) -> Any:
    state = _state()
    webhook = state.deliver(op)
    body = _control_subscription(state.subscription(op.subscription_id))
    return jsonify({**body, "operation_id": op.id, "webhook": webhook})


@control.post("/subscriptions/<sub_id>/plan")
def change_plan(sub_id: str) -> Any:
    body = _json_body()
    if not body.get("plan_id"):
        raise _Reject(400, "BadArgument", "plan_id is required")
    return _notified(_state().change(sub_id, plan_id=str(body["plan_id"]), dimensions=body.get("dimensions")))


@control.post("/subscriptions/<sub_id>/quantity")
def change_quantity(sub_id: str) -> Any:
    quantity = _int_or_none(_json_body().get("quantity"))
    if quantity is None:
        raise _Reject(400, "BadArgument", "quantity is required")
    return _notified(_state().change(sub_id, quantity=quantity))


@control.post("/subscriptions/<sub_id>/<any(suspend, reinstate, renew, unsubscribe, cancel):verb>")
def lifecycle(sub_id: str, verb: str) -> Any:
    action = {"suspend": "Suspend", "reinstate": "Reinstate", "renew": "Renew",
              "unsubscribe": "Unsubscribe", "cancel": "Unsubscribe"}[verb]
    at = _as_time(_json_body().get("at"))
    return _notified(_state().transition(sub_id, action, at=at))


@control.get("/operations/<op_id>")
def show_operation(op_id: str) -> Any:
    state = _state()
    with state.lock:
        op = state.operations.get(op_id)
        if op is None:
            raise _Reject(404, "NotFound", f"operation {op_id} not found")
        return jsonify({**operation_json(op), "acknowledged": op.acknowledged, "payload": op.payload})


@control.get("/webhooks")
def webhooks() -> Any:
    state = _state()
    with state.lock:
        return jsonify({"deliveries": list(state.deliveries)})


@control.post("/webhooks/<op_id>/redeliver")
def redeliver(op_id: str) -> Any:
    state = _state()
    with state.lock:
        op = state.operations.get(op_id)
    if op is None:
        raise _Reject(404, "NotFound", f"operation {op_id} not found")
    return jsonify(state.deliver(op))


@control.post("/tokens")
def mint_token() -> Any:
    state = _state()
    body = _json_body()
    claims_for = state.webhook_claims if body.get("kind", "webhook") == "webhook" else state.api_claims
    claims = claims_for(ttl=body.get("ttl"), **(body.get("claims") or {}))
    return jsonify({"token": state.sign(claims), "claims": claims})


# The app -----------------------------------------------------------------------------------


def create_azure_emulator(**options: Any) -> Flask:
    """Build the Azure emulator app; ``options`` are ``AzureEmulatorState`` keywords."""
    app = Flask("marketsync.azure_emulator")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["azure_emulator"] = AzureEmulatorState(**options)
    app.register_blueprint(api)
    app.register_blueprint(identity)
    app.register_blueprint(control)

    @app.errorhandler(_Reject)
    def _rejected(exc: _Reject) -> Any:
        return _error(exc.status, exc.code, exc.message)

    @app.errorhandler(404)
    def _not_found(_: Any) -> Any:
        return _error(404, "NotFound", "No such endpoint.")

    @app.errorhandler(405)
    def _not_allowed(_: Any) -> Any:
        return _error(405, "MethodNotAllowed", "Method not allowed.")

    return app
