"""A loopback Google Cloud Marketplace: Service Control, Partner Procurement and Pub/Sub push.

The real clients run against it unchanged: ``servicecontrol_v1.ServiceControllerClient``
with ``transport="rest"`` and ``client_options={"api_endpoint": url}``, and
``googleapiclient.discovery.build("cloudcommerceprocurement", "v1", client_options=...)``.

Wire rules it enforces (reference §3.3, §3.4):

- ``POST /v1/services/<service>:check`` answers ``checkErrors`` for unknown consumers
  (``CONSUMER_INVALID``) and consumers whose entitlement is not active
  (``SERVICE_NOT_ACTIVATED``).
- ``POST /v1/services/<service>:report`` stores operations by ``operationId``: the same id
  with the same payload is accepted again and counted once; the same id with a different
  payload is a ``reportError`` (``ALREADY_EXISTS``, or silently ignored when
  ``conflicting_operation="ignore"``). Unknown or inactive consumers and unknown metrics
  are ``reportErrors`` inside an HTTP 200; a request over ``max_request_bytes`` or with a
  duplicate metric+labels combination inside one operation is rejected whole (400).
- Faults: ``error`` -> 500 (with ``fail_after_store`` the operations are stored first, an
  ambiguous outcome), ``throttle`` -> 429, ``outage`` -> 503.

Procurement lifecycle (reference §3.1, §3.2), driven from the control API and the real API::

    create  -> ENTITLEMENT_ACTIVATION_REQUESTED   push ENTITLEMENT_CREATION_REQUESTED
    :approve -> ENTITLEMENT_ACTIVE                push ENTITLEMENT_ACTIVE
    :reject  -> ENTITLEMENT_CANCELLED             push ENTITLEMENT_CANCELLED
    plan-change -> ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL  push ENTITLEMENT_PLAN_CHANGE_REQUESTED
    :approvePlanChange -> ENTITLEMENT_ACTIVE (new plan)      push ENTITLEMENT_PLAN_CHANGED
    :rejectPlanChange  -> ENTITLEMENT_ACTIVE (old plan)      push ENTITLEMENT_PLAN_CHANGE_CANCELLED
    cancel (at_term_end) -> ENTITLEMENT_PENDING_CANCELLATION push ENTITLEMENT_PENDING_CANCELLATION
    revert-cancellation  -> ENTITLEMENT_ACTIVE               push ENTITLEMENT_CANCELLATION_REVERTED
    cancel               -> ENTITLEMENT_CANCELLED            push ENTITLEMENT_CANCELLED
    renew                -> (unchanged)                      push ENTITLEMENT_RENEWED
    delete               -> 404 on GET                       push ENTITLEMENT_DELETED

Every push is a Pub/Sub envelope with base64 ``data`` and an RS256 OIDC token from a key
made when the app is created; the certificates are at ``GET /_emulator/oauth2/v1/certs``.

Control API (``/_emulator/``): ``reset``, ``faults``, ``usage``, ``receiver``, ``clock``,
``config``, ``metrics``, ``auth`` (refused bearer tokens -> 401), ``notifications`` (and
``notifications/redeliver``: push again whatever no 2xx acknowledged), ``accounts``,
``entitlements`` (create) and
``entitlements/<id>/{plan-change,cancel,revert-cancellation,renew}``, ``DELETE
entitlements/<id>``.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import jwt as pyjwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from marketplaces.emulators.server import Faults, self_signed_certificate_pem
from marketplaces.gcp import (
    parse_rfc3339,
    EMULATOR_CERTS_PATH,
    SANDBOX_PROVIDER_ID,
    SANDBOX_PUSH_SERVICE_ACCOUNT,
    SANDBOX_SERVICE_NAME,
)

ACTIVE_STATES = frozenset(
    {
        "ENTITLEMENT_ACTIVE",
        "ENTITLEMENT_PENDING_CANCELLATION",
        "ENTITLEMENT_PENDING_PLAN_CHANGE",
        "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL",
    }
)
CHECK_CODES = {"NOT_FOUND": 5, "SERVICE_NOT_ACTIVATED": 104, "CONSUMER_INVALID": 125}
RPC_STATUS = {
    3: "INVALID_ARGUMENT",
    5: "NOT_FOUND",
    7: "PERMISSION_DENIED",
    16: "UNAUTHENTICATED",
    6: "ALREADY_EXISTS",
    9: "FAILED_PRECONDITION",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    8: "RESOURCE_EXHAUSTED",
}
HTTP_FOR_RPC = {3: 400, 5: 404, 6: 409, 7: 403, 9: 400, 13: 500, 14: 503, 8: 429, 16: 401}
SERVICE_CONFIG_ID = "2026-11-01r0"
SUBSCRIPTION = "projects/marketsync-sandbox/subscriptions/marketplace-procurement-push"


class ApiError(Exception):
    """An error answered in Google's JSON error shape."""

    def __init__(self, rpc_code: int, message: str, http_status: int | None = None):
        super().__init__(message)
        self.rpc_code = rpc_code
        self.message = message
        self.http_status = http_status or HTTP_FOR_RPC.get(rpc_code, 400)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class SigningKey:
    """An RSA key and its self-signed certificate, published by key id."""

    kid: str
    private_pem: bytes
    certificate_pem: str

    @classmethod
    def generate(cls) -> "SigningKey":
        """Make a fresh 2048-bit key with a self-signed certificate."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(
            kid=secrets.token_hex(20),
            private_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            certificate_pem=self_signed_certificate_pem(key, "marketsync-gcp-emulator").decode(),
        )

    def sign(self, claims: dict[str, Any]) -> str:
        """Return ``claims`` as an RS256 JWT carrying this key's id."""
        return pyjwt.encode(claims, self.private_pem, algorithm="RS256", headers={"kid": self.kid})


@dataclass
class GcpEmulatorState:
    """Everything the emulator knows; every access holds ``lock``."""

    provider_id: str
    service_name: str
    metrics: frozenset[str] | None
    push_service_account: str
    receiver_url: str | None
    audience: str | None
    max_request_bytes: int
    conflicting_operation: str
    fail_after_store: bool
    token_lifetime_seconds: int
    page_size: int
    push_timeout: float
    signing_key: SigningKey
    http: Any
    refused_tokens: set[str] = field(default_factory=set)
    faults: Faults = field(default_factory=Faults)
    lock: threading.RLock = field(default_factory=threading.RLock)
    fixed_now: datetime | None = None
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    entitlements: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    report_errors: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    message_counter: int = 0

    # Clock and tokens -----------------------------------------------------------------------

    def now(self) -> datetime:
        """Return the emulator's clock (fixed when set through ``/_emulator/clock``)."""
        return self.fixed_now or datetime.now(timezone.utc)

    def mint_push_token(
        self, *, audience: str | None = None, issued_at: float | None = None,
        key: SigningKey | None = None, **claims: Any,
    ) -> str:
        """Return a push OIDC token; ``claims`` override or add claims (tests use this)."""
        # Tokens use the real time: receivers check exp/iat against their own clock.
        iat = int(issued_at if issued_at is not None else time.time())
        body: dict[str, Any] = {
            "aud": audience if audience is not None else (self.audience or self.receiver_url or ""),
            "azp": "100000000000000000001",
            "email": self.push_service_account,
            "email_verified": True,
            "exp": iat + self.token_lifetime_seconds,
            "iat": iat,
            "iss": "https://accounts.google.com",
            "sub": "100000000000000000001",
        }
        body.update(claims)
        return (key or self.signing_key).sign(body)

    def envelope(self, event: dict[str, Any]) -> dict[str, Any]:
        """Return the Pub/Sub push envelope carrying ``event`` (holds the lock)."""
        self.message_counter += 1
        message_id = str(10_000_000_000_000_000 + self.message_counter)
        published = self.now().strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.now().microsecond // 1000:03d}Z"
        data = base64.b64encode(json.dumps(event).encode()).decode()
        return {
            "message": {
                "attributes": {},
                "data": data,
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": published,
                "publish_time": published,
            },
            "subscription": SUBSCRIPTION,
        }

    # Procurement state ----------------------------------------------------------------------

    def queue_event(self, outbox: list[dict[str, Any]], event_type: str, *,
                    entitlement: dict[str, Any] | None = None,
                    account: dict[str, Any] | None = None, **fields: Any) -> None:
        """Record a procurement event to push once the lock is released."""
        event: dict[str, Any] = {
            "eventId": f"{event_type.removeprefix('ENTITLEMENT_')}-{uuid.uuid4()}",
            "eventType": event_type,
            "providerId": self.provider_id,
        }
        subject = entitlement if entitlement is not None else account
        assert subject is not None
        body = {"id": subject["name"].rsplit("/", 1)[1], "updateTime": subject["updateTime"], **fields}
        event["entitlement" if entitlement is not None else "account"] = body
        record = {"event": event, "envelope": self.envelope(event), "delivery": None}
        self.notifications.append(record)
        outbox.append(record)

    def new_account(self, outbox: list[dict[str, Any]], account_id: str | None = None) -> dict[str, Any]:
        """Create an active account whose signup approval is pending."""
        account_id = account_id or str(uuid.uuid4())
        if account_id in self.accounts:
            raise ApiError(6, f"account {account_id} already exists")
        stamp = _rfc3339(self.now())
        account = {
            "name": f"providers/{self.provider_id}/accounts/{account_id}",
            "provider": self.provider_id,
            "state": "ACCOUNT_ACTIVE",
            "approvals": [{"name": "signup", "state": "PENDING", "updateTime": stamp}],
            "createTime": stamp,
            "updateTime": stamp,
        }
        self.accounts[account_id] = account
        self.queue_event(outbox, "ACCOUNT_ACTIVE", account=account)
        return account

    def new_entitlement(self, outbox: list[dict[str, Any]], *, account_id: str | None,
                        plan: str, product: str | None, usage_reporting_id: str | None,
                        entitlement_id: str | None = None) -> dict[str, Any]:
        """Create an entitlement awaiting approval (and its account when none is given)."""
        if not account_id:
            account_id = self.new_account(outbox)["name"].rsplit("/", 1)[1]
        elif account_id not in self.accounts:
            self.new_account(outbox, account_id)
        entitlement_id = entitlement_id or str(uuid.uuid4())
        if entitlement_id in self.entitlements:
            raise ApiError(6, f"entitlement {entitlement_id} already exists")
        stamp = _rfc3339(self.now())
        product = product or self.service_name
        entitlement = {
            "name": f"providers/{self.provider_id}/entitlements/{entitlement_id}",
            "account": f"providers/{self.provider_id}/accounts/{account_id}",
            "provider": self.provider_id,
            "product": product,
            "productExternalName": product,
            "plan": plan,
            "state": "ENTITLEMENT_ACTIVATION_REQUESTED",
            "usageReportingId": usage_reporting_id or f"project:pr-{secrets.token_hex(8)}",
            "orderId": str(uuid.uuid4()),
            "createTime": stamp,
            "updateTime": stamp,
        }
        self.entitlements[entitlement_id] = entitlement
        self.queue_event(outbox, "ENTITLEMENT_CREATION_REQUESTED", entitlement=entitlement)
        return entitlement

    def entitlement(self, provider: str, entitlement_id: str) -> dict[str, Any]:
        """Return the stored entitlement or raise NOT_FOUND."""
        found = self.entitlements.get(entitlement_id)
        if found is None or provider != self.provider_id:
            raise ApiError(5, f"Entitlement providers/{provider}/entitlements/{entitlement_id} not found.")
        return found

    def account(self, provider: str, account_id: str) -> dict[str, Any]:
        """Return the stored account or raise NOT_FOUND."""
        found = self.accounts.get(account_id)
        if found is None or provider != self.provider_id:
            raise ApiError(5, f"Account providers/{provider}/accounts/{account_id} not found.")
        return found

    def transition(self, outbox: list[dict[str, Any]], entitlement: dict[str, Any],
                   expected: Iterable[str], new_state: str, event_type: str,
                   **event_fields: Any) -> dict[str, Any]:
        """Move ``entitlement`` from one of ``expected`` to ``new_state`` and queue the push."""
        if entitlement["state"] not in set(expected):
            raise ApiError(
                9, f"Entitlement is in state {entitlement['state']}; expected one of {sorted(expected)}."
            )
        entitlement["state"] = new_state
        entitlement["updateTime"] = _rfc3339(self.now())
        self.queue_event(outbox, event_type, entitlement=entitlement, **event_fields)
        return entitlement

    # Service Control ------------------------------------------------------------------------

    def consumer_problem(self, service: str, consumer_id: str) -> tuple[str, str] | None:
        """Return (check error code, detail) when ``consumer_id`` may not use ``service``."""
        for entitlement in self.entitlements.values():
            if entitlement["usageReportingId"] != consumer_id:
                continue
            if entitlement["product"] != service:
                return "SERVICE_NOT_ACTIVATED", f"Service {service} is not activated for the consumer."
            if entitlement["state"] not in ACTIVE_STATES:
                return "SERVICE_NOT_ACTIVATED", f"Service {service} is not activated for the consumer."
            return None
        return "CONSUMER_INVALID", f"Consumer {consumer_id!r} is invalid."

    def usage(self) -> dict[str, Any]:
        """Return the totals per (consumer, metric, hour) and the raw accepted operations."""
        totals: dict[tuple[str, str, str], float] = {}
        for stored in self.operations.values():
            op = stored["operation"]
            hour = parse_rfc3339(op.get("startTime"))
            hour_text = hour.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:00:00Z") if hour else ""
            for value_set in op.get("metricValueSets", []):
                for value in value_set.get("metricValues", []):
                    key = (op.get("consumerId", ""), value_set.get("metricName", ""), hour_text)
                    totals[key] = totals.get(key, 0) + _metric_number(value)
        rows = [
            {
                "consumer_id": consumer,
                "metric": metric,
                "dimension": metric.rsplit("/", 1)[-1],
                "hour": hour,
                "quantity": int(q) if float(q).is_integer() else q,
            }
            for (consumer, metric, hour), q in sorted(totals.items())
        ]
        return {
            "totals": rows,
            "operations": [
                {"service": s["service"], "operation": s["operation"], "received": s["received"]}
                for s in self.operations.values()
            ],
            "report_errors": list(self.report_errors),
        }


def _metric_number(value: dict[str, Any]) -> float:
    if "int64Value" in value:
        return int(value["int64Value"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    return 0


def _fingerprint(operation: dict[str, Any]) -> str:
    return json.dumps(operation, sort_keys=True, separators=(",", ":"))


def create_gcp_emulator(**options: Any) -> Flask:
    """Build the emulator app; ``options`` override the defaults listed below.

    provider_id, service_name (default product), metrics (allowed bare metric names; None =
    any under the service), push_service_account, receiver_url, audience (default: the
    receiver URL), max_request_bytes (1 MB), conflicting_operation ("error" | "ignore"),
    fail_after_store, token_lifetime_seconds, page_size, push_timeout, now (fixed clock),
    http (requests session used for pushes), faults (a Faults instance), refused_tokens
    (bearer tokens answered 401 UNAUTHENTICATED).
    """
    known = {
        "provider_id", "service_name", "metrics", "push_service_account", "receiver_url",
        "audience", "max_request_bytes", "conflicting_operation", "fail_after_store",
        "token_lifetime_seconds", "page_size", "push_timeout", "now", "http", "faults",
        "refused_tokens",
    }
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown GCP emulator options: {sorted(unknown)}")
    metrics = options.get("metrics")
    state = GcpEmulatorState(
        provider_id=options.get("provider_id", SANDBOX_PROVIDER_ID),
        service_name=options.get("service_name", SANDBOX_SERVICE_NAME),
        metrics=frozenset(metrics) if metrics is not None else None,
        push_service_account=options.get("push_service_account", SANDBOX_PUSH_SERVICE_ACCOUNT),
        receiver_url=options.get("receiver_url"),
        audience=options.get("audience"),
        max_request_bytes=int(options.get("max_request_bytes", 1_000_000)),
        conflicting_operation=options.get("conflicting_operation", "error"),
        fail_after_store=bool(options.get("fail_after_store", False)),
        token_lifetime_seconds=int(options.get("token_lifetime_seconds", 3600)),
        page_size=int(options.get("page_size", 200)),
        push_timeout=float(options.get("push_timeout", 5.0)),
        signing_key=SigningKey.generate(),
        http=options.get("http") or requests.Session(),
        faults=options.get("faults") or Faults(),
        fixed_now=options.get("now"),
        refused_tokens=set(options.get("refused_tokens", ())),
    )
    if state.conflicting_operation not in ("error", "ignore"):
        raise ValueError("conflicting_operation must be 'error' or 'ignore'")

    app = Flask("gcp_emulator")
    app.extensions["gcp_emulator"] = state

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify(error={
            "code": exc.http_status, "message": exc.message,
            "status": RPC_STATUS.get(exc.rpc_code, "UNKNOWN"),
        }), exc.http_status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        code = exc.code or 500
        return jsonify(error={"code": code, "message": exc.description, "status": "UNKNOWN"}), code

    def json_body() -> dict[str, Any]:
        body = request.get_json(silent=True, force=True)
        if body is None and request.get_data():
            raise ApiError(3, "Invalid JSON payload received.")
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ApiError(3, "Invalid JSON payload received: expected an object.")
        return body

    def authenticate() -> None:
        # Anonymous calls are the sandbox default; a refused bearer token stands for bad
        # credentials (an unknown or unlinked service account).
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        with state.lock:
            refused = scheme.lower() == "bearer" and token.strip() in state.refused_tokens
        if refused:
            raise ApiError(16, "Request had invalid authentication credentials.")

    def draw_fault() -> str | None:
        authenticate()
        fault = state.faults.draw()
        if fault == "outage":
            raise ApiError(14, "The service is currently unavailable.", 503)
        if fault == "throttle":
            raise ApiError(8, "Quota exceeded; retry later.", 429)
        return fault

    def deliver(outbox: list[dict[str, Any]]) -> None:
        # Called without the lock: a receiver may call back into the emulator.
        with state.lock:
            url, audience = state.receiver_url, state.audience or state.receiver_url
        for record in outbox:
            record["attempts"] = record.get("attempts", 0) + 1
            if not url:
                record["delivery"] = {"status": None, "error": "no receiver configured"}
                continue
            token = state.mint_push_token(audience=audience)
            try:
                answer = state.http.post(
                    url, data=json.dumps(record["envelope"]),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                    timeout=state.push_timeout,
                )
                record["delivery"] = {"status": answer.status_code, "error": None}
            except requests.RequestException as exc:
                record["delivery"] = {"status": None, "error": str(exc)}

    def enum_as_int() -> bool:
        return "enum-encoding=int" in (request.args.get("$alt") or "")

    # Service Control ------------------------------------------------------------------------

    @app.post("/v1/services/<path:service_and_method>")
    def service_control(service_and_method: str) -> Any:
        service, _, method = service_and_method.rpartition(":")
        if method not in ("check", "report") or not service:
            raise ApiError(5, f"Method {method!r} not found.")
        fault = draw_fault()
        if len(request.get_data()) > state.max_request_bytes:
            raise ApiError(3, f"Request payload size exceeds the limit: {state.max_request_bytes} bytes.")
        body = json_body()
        if method == "check":
            if fault == "error":
                raise ApiError(13, "Internal error.", 500)
            return check(service, body)
        if fault == "error" and not state.fail_after_store:
            raise ApiError(13, "Internal error.", 500)
        answer = report(service, body)
        if fault == "error":
            # Stored, yet the caller sees a failure: the outcome is ambiguous by design.
            raise ApiError(13, "Internal error.", 500)
        return answer

    def check(service: str, body: dict[str, Any]) -> Any:
        operation = body.get("operation")
        if not isinstance(operation, dict) or not operation.get("operationId"):
            raise ApiError(3, "operation.operationId is required.")
        consumer = operation.get("consumerId") or ""
        if not consumer:
            raise ApiError(3, "operation.consumerId is required.")
        with state.lock:
            problem = state.consumer_problem(service, consumer)
        answer: dict[str, Any] = {
            "operationId": operation["operationId"],
            "serviceConfigId": SERVICE_CONFIG_ID,
            "serviceRolloutId": SERVICE_CONFIG_ID,
        }
        if problem:
            code, detail = problem
            answer["checkErrors"] = [{
                "code": CHECK_CODES[code] if enum_as_int() else code,
                "subject": consumer,
                "detail": detail,
            }]
        return jsonify(answer)

    def report(service: str, body: dict[str, Any]) -> Any:
        operations = body.get("operations")
        if not isinstance(operations, list):
            raise ApiError(3, "operations must be a list.")
        for position, operation in enumerate(operations):
            validate_operation(position, operation)
        errors: list[dict[str, Any]] = []
        with state.lock:
            for operation in operations:
                problem = report_problem(service, operation)
                if problem:
                    code, message = problem
                    errors.append({"operationId": operation["operationId"],
                                   "status": {"code": code, "message": message}})
                    continue
                op_id = operation["operationId"]
                stored = state.operations.get(op_id)
                if stored is None:
                    state.operations[op_id] = {
                        "service": service, "operation": operation,
                        "fingerprint": _fingerprint(operation), "received": 1,
                    }
                elif stored["fingerprint"] == _fingerprint(operation):
                    stored["received"] += 1  # an identical resend: accepted, counted once
                elif state.conflicting_operation == "error":
                    errors.append({"operationId": op_id, "status": {
                        "code": 6,
                        "message": f"Operation {op_id} was already reported with a different payload.",
                    }})
            state.report_errors.extend(errors)
        answer: dict[str, Any] = {"serviceConfigId": SERVICE_CONFIG_ID, "serviceRolloutId": SERVICE_CONFIG_ID}
        if errors:
            answer["reportErrors"] = errors
        return jsonify(answer)

    def validate_operation(position: int, operation: Any) -> None:
        where = f"operations[{position}]"
        if not isinstance(operation, dict):
            raise ApiError(3, f"{where} must be an object.")
        for name in ("operationId", "consumerId", "startTime", "endTime"):
            if not operation.get(name):
                raise ApiError(3, f"{where}.{name} is required.")
        seen: set[tuple[str, str]] = set()
        for value_set in operation.get("metricValueSets", []):
            for value in value_set.get("metricValues", []):
                combo = (value_set.get("metricName", ""), json.dumps(value.get("labels", {}), sort_keys=True))
                # Google rejects the whole request when one operation repeats a metric+labels.
                if combo in seen:
                    raise ApiError(3, f"{where}: duplicate metric value for {combo[0]} with the same labels.")
                seen.add(combo)

    def report_problem(service: str, operation: dict[str, Any]) -> tuple[int, str] | None:
        consumer = operation["consumerId"]
        if state.consumer_problem(service, consumer):
            return 5, f"Consumer '{consumer}' not found or not active."
        start, end = parse_rfc3339(operation["startTime"]), parse_rfc3339(operation["endTime"])
        if start is None or end is None or end < start:
            return 3, "startTime and endTime must be RFC 3339 times with startTime <= endTime."
        for value_set in operation.get("metricValueSets", []):
            metric = value_set.get("metricName", "")
            prefix, _, bare = metric.rpartition("/")
            if prefix != service or (state.metrics is not None and bare not in state.metrics):
                return 3, f"Metric {metric!r} is not defined for service {service}."
            for value in value_set.get("metricValues", []):
                if "int64Value" in value:
                    try:
                        number = int(value["int64Value"])
                    except (TypeError, ValueError):
                        return 3, f"Metric {metric!r}: int64Value is not an integer."
                    if number < 0:
                        return 3, f"Metric {metric!r}: value must not be negative."
                elif "doubleValue" not in value:
                    return 3, f"Metric {metric!r}: value kind does not match the metric (INT64)."
        return None

    # Partner Procurement --------------------------------------------------------------------

    @app.get("/v1/providers/<provider>/entitlements/<entitlement_id>")
    def get_entitlement(provider: str, entitlement_id: str) -> Any:
        draw_fault_or_500()
        with state.lock:
            return jsonify(state.entitlement(provider, entitlement_id))

    @app.get("/v1/providers/<provider>/entitlements")
    def list_entitlements(provider: str) -> Any:
        draw_fault_or_500()
        if provider != state.provider_id:
            raise ApiError(5, f"Provider {provider} not found.")
        matches = parse_filter(request.args.get("filter", ""))
        size = int(request.args.get("pageSize") or state.page_size)
        try:
            start = int(base64.urlsafe_b64decode(request.args.get("pageToken") or "MA==").decode())
        except ValueError:
            raise ApiError(3, "Invalid pageToken.") from None
        with state.lock:
            items = [e for e in sorted(state.entitlements.values(), key=lambda e: (e["createTime"], e["name"]))
                     if matches(e)]
            page = [dict(e) for e in items[start:start + size]]
        answer: dict[str, Any] = {"entitlements": page}
        if start + size < len(items):
            answer["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return jsonify(answer)

    @app.post("/v1/providers/<provider>/entitlements/<name_and_method>")
    def entitlement_method(provider: str, name_and_method: str) -> Any:
        entitlement_id, _, method = name_and_method.partition(":")
        draw_fault_or_500()
        body = json_body()
        outbox: list[dict[str, Any]] = []
        with state.lock:
            entitlement = state.entitlement(provider, entitlement_id)
            if method == "approve":
                state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVATION_REQUESTED"},
                                 "ENTITLEMENT_ACTIVE", "ENTITLEMENT_ACTIVE")
            elif method == "reject":
                state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVATION_REQUESTED"},
                                 "ENTITLEMENT_CANCELLED", "ENTITLEMENT_CANCELLED")
                entitlement["cancellationReason"] = "rejected"
                if body.get("reason"):
                    entitlement["messageToUser"] = str(body["reason"])[:256]
            elif method in ("approvePlanChange", "rejectPlanChange"):
                pending = entitlement.get("newPendingPlan")
                if entitlement["state"] == "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL" and \
                        body.get("pendingPlanName") != pending:
                    raise ApiError(9, f"pendingPlanName must be the pending plan {pending!r}.")
                if method == "approvePlanChange":
                    state.transition(outbox, entitlement, {"ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL"},
                                     "ENTITLEMENT_ACTIVE", "ENTITLEMENT_PLAN_CHANGED", newPlan=pending)
                    entitlement["plan"] = pending
                else:
                    state.transition(outbox, entitlement, {"ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL"},
                                     "ENTITLEMENT_ACTIVE", "ENTITLEMENT_PLAN_CHANGE_CANCELLED")
                entitlement.pop("newPendingPlan", None)
            else:
                raise ApiError(5, f"Method {method!r} not found.")
        deliver(outbox)
        return jsonify({})  # google.protobuf.Empty, as the real methods answer

    @app.get("/v1/providers/<provider>/accounts/<account_id>")
    def get_account(provider: str, account_id: str) -> Any:
        draw_fault_or_500()
        with state.lock:
            return jsonify(state.account(provider, account_id))

    @app.get("/v1/providers/<provider>/accounts")
    def list_accounts(provider: str) -> Any:
        draw_fault_or_500()
        if provider != state.provider_id:
            raise ApiError(5, f"Provider {provider} not found.")
        with state.lock:
            return jsonify({"accounts": [dict(a) for a in state.accounts.values()]})

    @app.post("/v1/providers/<provider>/accounts/<name_and_method>")
    def account_method(provider: str, name_and_method: str) -> Any:
        account_id, _, method = name_and_method.partition(":")
        draw_fault_or_500()
        body = json_body()
        with state.lock:
            account = state.account(provider, account_id)
            if method not in ("approve", "reject"):
                raise ApiError(5, f"Method {method!r} not found.")
            approval_name = body.get("approvalName")
            approval = next((a for a in account["approvals"] if a["name"] == approval_name), None)
            if approval is None:
                raise ApiError(3, f"Unknown approvalName {approval_name!r}.")
            approval["state"] = "APPROVED" if method == "approve" else "REJECTED"
            approval["updateTime"] = account["updateTime"] = _rfc3339(state.now())
            if body.get("reason"):
                approval["reason"] = str(body["reason"])
        return jsonify({})

    def draw_fault_or_500() -> None:
        if draw_fault() == "error":
            raise ApiError(13, "Internal error.", 500)

    def parse_filter(text: str) -> Any:
        terms: list[tuple[str, str]] = []
        for part in text.replace(" AND ", " ").split():
            name, sep, value = part.partition("=")
            if not sep or not name:
                raise ApiError(3, f"Unsupported filter term {part!r}.")
            camel = "".join(w if i == 0 else w.capitalize() for i, w in enumerate(name.split("_")))
            terms.append((camel, value.strip('"')))

        def matches(entitlement: dict[str, Any]) -> bool:
            for name, value in terms:
                actual = str(entitlement.get(name, ""))
                if name == "account":
                    actual = actual.rsplit("/", 1)[-1]
                if actual != value:
                    return False
            return True

        return matches

    # Control API ----------------------------------------------------------------------------

    @app.post("/_emulator/reset")
    def reset() -> Any:
        with state.lock:
            state.accounts.clear()
            state.entitlements.clear()
            state.operations.clear()
            state.report_errors.clear()
            state.notifications.clear()
            state.fixed_now = options.get("now")
            state.fail_after_store = bool(options.get("fail_after_store", False))
            state.metrics = frozenset(metrics) if metrics is not None else None
            state.refused_tokens = set(options.get("refused_tokens", ()))
            state.receiver_url = options.get("receiver_url")
            state.audience = options.get("audience")
        state.faults.reset()
        return jsonify({})

    @app.route("/_emulator/faults", methods=["GET", "POST"])
    def faults() -> Any:
        if request.method == "POST":
            values = json_body()
            with state.lock:
                if "fail_after_store" in values:
                    state.fail_after_store = bool(values.pop("fail_after_store"))
            try:
                state.faults.update(**values)
            except KeyError as exc:
                raise ApiError(3, f"unknown fault {exc.args[0]!r}") from None
        return jsonify({**state.faults.as_dict(), "fail_after_store": state.fail_after_store})

    @app.route("/_emulator/metrics", methods=["GET", "POST"])
    def defined_metrics() -> Any:
        """Define the service's metrics (bare names); until then any metric of the service goes."""
        if request.method == "POST":
            body = json_body()
            names = body.get("metrics")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ApiError(3, "metrics must be a list of metric names")
            with state.lock:
                if body.get("replace") or state.metrics is None:
                    state.metrics = frozenset(names)
                else:
                    state.metrics = state.metrics | frozenset(names)
        with state.lock:
            return jsonify({"metrics": None if state.metrics is None else sorted(state.metrics)})

    @app.post("/_emulator/auth")
    def auth() -> Any:
        """Set the bearer tokens the APIs refuse with 401 (stand-ins for bad credentials)."""
        tokens = json_body().get("refused_tokens") or []
        with state.lock:
            state.refused_tokens = {str(t) for t in tokens}
            return jsonify({"refused_tokens": sorted(state.refused_tokens)})

    @app.get("/_emulator/usage")
    def usage() -> Any:
        with state.lock:
            return jsonify(state.usage())

    @app.route("/_emulator/receiver", methods=["GET", "POST"])
    def receiver() -> Any:
        if request.method == "POST":
            body = json_body()
            with state.lock:
                state.receiver_url = body.get("url") or None
                if "audience" in body:
                    state.audience = body.get("audience") or None
        with state.lock:
            return jsonify({"url": state.receiver_url, "audience": state.audience or state.receiver_url})

    @app.route("/_emulator/clock", methods=["GET", "POST"])
    def clock() -> Any:
        if request.method == "POST":
            body = json_body()
            with state.lock:
                if "now" in body:
                    moment = parse_rfc3339(body["now"]) if body["now"] else None
                    if body["now"] and moment is None:
                        raise ApiError(3, "now must be an RFC 3339 time or null")
                    state.fixed_now = moment
                if body.get("advance_seconds"):
                    state.fixed_now = state.now() + timedelta(seconds=float(body["advance_seconds"]))
        with state.lock:
            return jsonify({"now": _rfc3339(state.now()), "fixed": state.fixed_now is not None})

    @app.get("/_emulator/config")
    def config() -> Any:
        with state.lock:
            return jsonify({
                "provider_id": state.provider_id,
                "service_name": state.service_name,
                "push_service_account": state.push_service_account,
                "receiver_url": state.receiver_url,
                "audience": state.audience or state.receiver_url,
                "certs_path": EMULATOR_CERTS_PATH,
            })

    @app.get(EMULATOR_CERTS_PATH)
    def certs() -> Any:
        return jsonify({state.signing_key.kid: state.signing_key.certificate_pem})

    @app.get("/_emulator/notifications")
    def notifications() -> Any:
        with state.lock:
            return jsonify({"notifications": list(state.notifications)})

    @app.post("/_emulator/notifications/redeliver")
    def redeliver() -> Any:
        """Push again every notification not yet acknowledged with a 2xx (Pub/Sub retries)."""
        with state.lock:
            outbox = [n for n in state.notifications
                      if not (n["delivery"] and 200 <= (n["delivery"]["status"] or 0) < 300)]
        deliver(outbox)
        return jsonify({"redelivered": len(outbox)})

    @app.post("/_emulator/accounts")
    def create_account() -> Any:
        body = json_body()
        outbox: list[dict[str, Any]] = []
        with state.lock:
            account = dict(state.new_account(outbox, body.get("id")))
        deliver(outbox)
        return jsonify(account), 201

    @app.post("/_emulator/entitlements")
    def create_entitlement() -> Any:
        body = json_body()
        outbox: list[dict[str, Any]] = []
        with state.lock:
            entitlement = state.new_entitlement(
                outbox,
                account_id=body.get("account_id"),
                plan=body.get("plan") or "standard-payg",
                product=body.get("product"),
                usage_reporting_id=body.get("usage_reporting_id"),
                entitlement_id=body.get("id"),
            )
            if body.get("approve"):
                state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVATION_REQUESTED"},
                                 "ENTITLEMENT_ACTIVE", "ENTITLEMENT_ACTIVE")
            answer = {"entitlement": dict(entitlement), "identifiers": identifiers_of(entitlement)}
        deliver(outbox)
        return jsonify(answer), 201

    def identifiers_of(entitlement: dict[str, Any]) -> dict[str, str]:
        return {
            "service_name": entitlement["product"],
            "consumer_id": entitlement["usageReportingId"],
            "entitlement_id": entitlement["name"].rsplit("/", 1)[1],
            "account_id": entitlement["account"].rsplit("/", 1)[1],
            "provider_id": entitlement["provider"],
        }

    @app.post("/_emulator/entitlements/<entitlement_id>/<action>")
    def entitlement_action(entitlement_id: str, action: str) -> Any:
        body = json_body()
        outbox: list[dict[str, Any]] = []
        with state.lock:
            entitlement = state.entitlement(state.provider_id, entitlement_id)
            if action == "plan-change":
                plan = body.get("plan")
                if not plan:
                    raise ApiError(3, "plan is required")
                entitlement["newPendingPlan"] = plan
                state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVE"},
                                 "ENTITLEMENT_PENDING_PLAN_CHANGE_APPROVAL",
                                 "ENTITLEMENT_PLAN_CHANGE_REQUESTED", newPlan=plan)
            elif action == "cancel" and body.get("at_term_end"):
                state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVE"},
                                 "ENTITLEMENT_PENDING_CANCELLATION", "ENTITLEMENT_PENDING_CANCELLATION")
            elif action == "cancel":
                state.transition(outbox, entitlement, ACTIVE_STATES | {"ENTITLEMENT_ACTIVATION_REQUESTED"},
                                 "ENTITLEMENT_CANCELLED", "ENTITLEMENT_CANCELLED")
                entitlement["cancellationReason"] = body.get("reason") or "user-cancelled"
                entitlement.pop("newPendingPlan", None)
            elif action == "revert-cancellation":
                state.transition(outbox, entitlement, {"ENTITLEMENT_PENDING_CANCELLATION"},
                                 "ENTITLEMENT_ACTIVE", "ENTITLEMENT_CANCELLATION_REVERTED")
            elif action == "renew":
                state.transition(outbox, entitlement, {"ENTITLEMENT_ACTIVE"},
                                 "ENTITLEMENT_ACTIVE", "ENTITLEMENT_RENEWED")
            else:
                raise ApiError(5, f"unknown action {action!r}")
            answer = dict(entitlement)
        deliver(outbox)
        return jsonify(answer)

    @app.delete("/_emulator/entitlements/<entitlement_id>")
    def delete_entitlement(entitlement_id: str) -> Any:
        outbox: list[dict[str, Any]] = []
        with state.lock:
            entitlement = state.entitlement(state.provider_id, entitlement_id)
            del state.entitlements[entitlement_id]
            entitlement["updateTime"] = _rfc3339(state.now())
            state.queue_event(outbox, "ENTITLEMENT_DELETED", entitlement=entitlement)
        deliver(outbox)
        return jsonify({})

    return app
