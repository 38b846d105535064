"""What the Azure emulator knows: identities and keys, subscriptions, operations, usage, webhook deliveries."""

from __future__ import annotations

import math
import secrets
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from marketplaces.azure import MARKETPLACE_APP_ID, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT_ID
from marketplaces.emulators.server import ControlDefaults, Faults
from marketplaces.emulators.azure.wire import (
    PENDING,
    SUBSCRIBED,
    SUSPENDED,
    UNSUBSCRIBED,
    _MIXED_CASE_KEYS,
    _NULL_TIME,
    _Operation,
    _Reject,
    _Subscription,
    _as_time,
    _echo,
    _failure,
    _int_or_none,
    _wire_time,
    subscription_json,
)


DEFAULT_OPTIONS: dict[str, Any] = {
    "tenant_id": SANDBOX_TENANT_ID,
    "client_id": SANDBOX_CLIENT_ID,
    "client_secret": SANDBOX_CLIENT_SECRET,
    "publisher_id": "marketsync-sandbox",
    "usage_window_seconds": 24 * 3600,
    "batch_limit": 25,
    "page_size": 100,
    "token_ttl": 3600,
    "landing_token_ttl": 24 * 3600,
    "receiver_url": None,
    "now": None,  # a fixed clock (datetime or ISO text); None follows the wall clock
    "webhook_key_style": "camel",
    "webhook_timeout": 10.0,
    "seed": None,
}


class AzureEmulatorState(ControlDefaults):
    """Everything one emulator instance knows, behind one lock."""

    def __init__(self, **options: Any):
        self._options = self._checked(options)
        self.lock = threading.RLock()
        self.faults = Faults()
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        self.reset()

    @staticmethod
    def _checked(options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise TypeError(f"unknown Azure emulator options: {sorted(unknown)}")
        return dict(options)

    def reset(self, options: Mapping[str, Any] | None = None) -> None:
        """Forget subscriptions, usage, operations, deliveries, faults and clock settings.

        ``options`` override the creation options (``DEFAULT_OPTIONS``) until the next reset.
        """
        settings = {**DEFAULT_OPTIONS, **self._options, **self._checked(options or {})}
        with self.lock:
            self.tenant_id = settings["tenant_id"]
            self.client_id = settings["client_id"]
            self.client_secret = settings["client_secret"] or None  # None: any secret is accepted
            self.publisher_id = settings["publisher_id"]
            self.usage_window = timedelta(seconds=settings["usage_window_seconds"])
            self.batch_limit = settings["batch_limit"]
            self.page_size = settings["page_size"]
            self.token_ttl = settings["token_ttl"]
            self.landing_token_ttl = timedelta(seconds=settings["landing_token_ttl"])
            self.webhook_key_style = settings["webhook_key_style"]
            self.webhook_timeout = settings["webhook_timeout"]
            self.receiver_url: str | None = settings["receiver_url"]
            self.fixed_now: datetime | None = _as_time(settings["now"])
            self.subscriptions: dict[str, _Subscription] = {}
            self.operations: dict[str, _Operation] = {}
            self.usage: dict[tuple[str, str, datetime], dict[str, Any]] = {}
            # What the read-back says of an accepted event (reconStatus, processedQuantity) when a
            # test set it; otherwise an accepted event reads Accepted, processed in full.
            self.recon: dict[tuple[str, str, datetime], dict[str, Any]] = {}
            self.deliveries: list[dict[str, Any]] = []
            self.faults.reset()
            self.faults.update(seed=settings["seed"])

    # The shared control API (marketplaces.emulators.control) ------------------------------

    def wire_time(self, moment: datetime) -> str:
        return _wire_time(moment)

    def receiver_view(self) -> dict[str, Any]:
        with self.lock:
            return {"url": self.receiver_url}

    def set_receiver(self, values: Mapping[str, Any]) -> None:
        unknown = set(values) - {"url"}
        if unknown:
            raise KeyError(f"unknown receiver settings: {sorted(unknown)}")
        with self.lock:
            if "url" in values:
                self.receiver_url = values["url"] or None

    def notification_log(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.deliveries)

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
        if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or not math.isfinite(quantity):
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
            # Hours before a cancellation may still be reported (inside the window); a Suspended
            # (or not yet activated) subscription takes nothing until it is Subscribed again.
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

    def set_included(self, contract: str, included: Mapping[str, int] | None) -> str:
        """Set what the subscription's current plan includes per dimension (its listAvailablePlans)."""
        sub = self.subscriptions.get(contract)
        if sub is None:
            raise KeyError(contract)
        if included is not None:
            sub.included[sub.plan_id] = dict(included)
        return sub.id

    def included_view(self) -> list[dict[str, Any]]:
        out = []
        for sub in self.subscriptions.values():
            included = sub.included.get(sub.plan_id)
            if not included:
                continue
            reported: dict[str, int] = {}
            for (resource, dimension, _hour), event in self.usage.items():
                if resource == sub.id:
                    reported[dimension] = reported.get(dimension, 0) + int(event["quantity"])
            out.append({"contract": sub.id, "included": dict(included), "reported": reported})
        return out

    def usage_events(self, args: Mapping[str, str], app_id: str) -> list[dict[str, Any]]:
        """Answer ``GET /api/usageEvents``: the accepted events of hours in [usageStartDate, UsageEndDate).

        ``usageStartDate`` is required (ISO 8601, a date or a date and time); ``UsageEndDate``
        defaults to the current date, and a date without a time takes that whole day (a date and
        time is an exclusive end; Microsoft documents neither); ``offerId``, ``planId``, ``dimension``,
        ``azureSubscriptionId`` and ``reconStatus`` filter. Only the caller's own resources are listed.
        """
        query = {name.lower(): value for name, value in args.items()}
        start = _query_time(query.get("usagestartdate"), "usageStartDate", required=True)
        end = _query_time(query.get("usageenddate"), "UsageEndDate", required=False)
        if end is None:
            end = self.now().replace(hour=0, minute=0, second=0, microsecond=0)
        if "T" not in (query.get("usageenddate") or ""):
            end += timedelta(days=1)  # a date (the default: today) ends with that whole day
        wanted = {name: query.get(name.lower()) for name in
                  ("offerId", "planId", "dimension", "azureSubscriptionId", "reconStatus")}
        out = []
        with self.lock:
            for (resource, dimension, hour), event in sorted(self.usage.items()):
                if not start <= hour < end:
                    continue
                sub = self.subscriptions.get(resource)
                if sub is None or sub.app_id != app_id:
                    continue
                recon = self.recon.get((resource, dimension, hour), {})
                item = {
                    "usageDate": _wire_time(hour),
                    "usageResourceId": resource,
                    "dimension": dimension,
                    "planId": event.get("planId"),
                    "planName": "",
                    "offerId": sub.offer_id if sub else "",
                    "offerName": "",
                    "offerType": "SaaS",
                    "azureSubscriptionId": sub.azure_subscription_id if sub else "",
                    "reconStatus": recon.get("reconStatus", "Accepted"),
                    "submittedQuantity": event["quantity"],
                    "processedQuantity": recon.get("processedQuantity", event["quantity"]),
                    "submittedCount": 1,
                }
                if all(not value or item[name] == value for name, value in wanted.items()):
                    out.append(item)
        return out

    def set_recon(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Set what the read-back says of one accepted event (a test's Rejected or Mismatch)."""
        try:
            hour = _as_time(body["hour"]).replace(minute=0, second=0, microsecond=0)
            key = (str(body["resource_id"]), str(body["dimension"]), hour)
            status = str(body["recon_status"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _Reject(400, "BadArgument", f"resource_id, dimension, hour and recon_status are required: {exc}") from None
        with self.lock:
            if key not in self.usage:
                raise _Reject(404, "NotFound", "no accepted usage event for that resource, dimension and hour")
            recon: dict[str, Any] = {"reconStatus": status}
            if body.get("processed_quantity") is not None:
                recon["processedQuantity"] = float(body["processed_quantity"])
            self.recon[key] = recon
            return {"resource_id": key[0], "dimension": key[1], "hour": _wire_time(hour), **recon}

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
            included={str(plan): {str(k): int(v) for k, v in units.items()}
                      for plan, units in (body.get("included") or {}).items()},
            status=SUBSCRIBED if auto else PENDING,
            app_id=str(body.get("app_id") or self.client_id),
            email=str(body.get("email") or "buyer@sandbox.example"),
            created=now,
            last_modified=now,
            term_start=now.replace(hour=0, minute=0, second=0, microsecond=0),
            landing_token=secrets.token_urlsafe(24),
            landing_token_expires=now + self.landing_token_ttl,
            azure_subscription_id=str(body.get("azure_subscription_id")
                                      or uuid.uuid5(uuid.NAMESPACE_URL, f"azure-subscription:{sub_id}")),
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


def _query_time(value: str | None, name: str, *, required: bool) -> datetime | None:
    """Parse a usageEvents date parameter (a date, or a date and time; UTC when no offset is given)."""
    if not value:
        if required:
            raise _Reject(400, "BadArgument", f"The {name} query parameter is required.")
        return None
    try:
        return _as_time(value)
    except ValueError:
        raise _Reject(400, "BadArgument", f"The {name} query parameter is not an ISO 8601 date.") from None
