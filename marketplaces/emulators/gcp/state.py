"""What the Google emulator knows: accounts, entitlements, reported operations, pushes sent."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import requests

from marketplaces.emulators.control import parse_instant
from marketplaces.emulators.server import ControlDefaults, Faults
from marketplaces.gcp import SANDBOX_PROVIDER_ID, SANDBOX_PUSH_SERVICE_ACCOUNT, SANDBOX_SERVICE_NAME, parse_rfc3339
from marketplaces.emulators.gcp.wire import (
    ACTIVE_STATES,
    SUBSCRIPTION,
    ApiError,
    SigningKey,
    _metric_number,
    _rfc3339,
)


DEFAULT_OPTIONS: dict[str, Any] = {
    "provider_id": SANDBOX_PROVIDER_ID,
    "service_name": SANDBOX_SERVICE_NAME,  # the default product
    "metrics": None,  # allowed bare metric names; None = any under the service
    "push_service_account": SANDBOX_PUSH_SERVICE_ACCOUNT,
    "receiver_url": None,
    "audience": None,  # default: the receiver URL
    "max_request_bytes": 1_000_000,
    "conflicting_operation": "error",  # or "ignore"
    "fail_after_store": False,
    "token_lifetime_seconds": 3600,
    "page_size": 200,
    "push_timeout": 5.0,
    "now": None,  # a fixed clock (datetime or RFC 3339 text)
    "refused_tokens": (),  # bearer tokens answered 401 UNAUTHENTICATED
}
_BUILD_ONLY = ("http", "faults")  # objects, given when the app is built: a requests session, a Faults


def settings_of(options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the state fields ``options`` (over ``DEFAULT_OPTIONS``) set; raise on unknown or bad ones."""
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown GCP emulator options: {sorted(unknown)}")
    values = {**DEFAULT_OPTIONS, **options}
    if values["conflicting_operation"] not in ("error", "ignore"):
        raise ValueError("conflicting_operation must be 'error' or 'ignore'")
    now = values["now"]
    return {
        "provider_id": values["provider_id"],
        "service_name": values["service_name"],
        "metrics": frozenset(values["metrics"]) if values["metrics"] is not None else None,
        "push_service_account": values["push_service_account"],
        "receiver_url": values["receiver_url"],
        "audience": values["audience"],
        "max_request_bytes": int(values["max_request_bytes"]),
        "conflicting_operation": values["conflicting_operation"],
        "fail_after_store": bool(values["fail_after_store"]),
        "token_lifetime_seconds": int(values["token_lifetime_seconds"]),
        "page_size": int(values["page_size"]),
        "push_timeout": float(values["push_timeout"]),
        "fixed_now": parse_instant(now) if isinstance(now, str) else now,
        "refused_tokens": set(values["refused_tokens"]),
    }


@dataclass
class GcpEmulatorState(ControlDefaults):
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
    # Every report call stores its operations, then answers 500 (checks pass): the ambiguous
    # outcome a sender must resend identical, under the same operationIds.
    ambiguous_reports: bool = False
    faults: Faults = field(default_factory=Faults)
    lock: threading.RLock = field(default_factory=threading.RLock)
    fixed_now: datetime | None = None
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    entitlements: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    report_errors: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    message_counter: int = 0
    initial_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, options: Mapping[str, Any]) -> "GcpEmulatorState":
        """Build the state from creation options (``DEFAULT_OPTIONS`` plus ``http`` and ``faults``)."""
        built = {name: options[name] for name in _BUILD_ONLY if options.get(name) is not None}
        initial = {k: v for k, v in options.items() if k not in _BUILD_ONLY}
        return cls(**settings_of(initial), signing_key=SigningKey.generate(),
                   http=built.get("http") or requests.Session(), faults=built.get("faults") or Faults(),
                   initial_options=initial)

    def reset(self, options: Mapping[str, Any] | None = None) -> None:
        """Forget everything but the signing key; ``options`` override the creation options until the next reset."""
        settings = settings_of({**self.initial_options, **(options or {})})
        with self.lock:
            for name, value in settings.items():
                setattr(self, name, value)
            self.ambiguous_reports = False
            self.accounts.clear()
            self.entitlements.clear()
            self.operations.clear()
            self.report_errors.clear()
            self.checks.clear()
            self.notifications.clear()
        self.faults.reset()

    # The shared control API (marketplaces.emulators.control) ---------------------------------

    def wire_time(self, moment: datetime) -> str:
        return _rfc3339(moment)

    def faults_view(self) -> dict[str, Any]:
        return {**self.faults.as_dict(), "fail_after_store": self.fail_after_store,
                "ambiguous_reports": self.ambiguous_reports}

    def set_faults(self, values: dict[str, Any]) -> None:
        values = dict(values)
        with self.lock:
            if "fail_after_store" in values:
                self.fail_after_store = bool(values.pop("fail_after_store"))
            if "ambiguous_reports" in values:
                self.ambiguous_reports = bool(values.pop("ambiguous_reports"))
        self.faults.update(**values)

    def receiver_view(self) -> dict[str, Any]:
        with self.lock:
            return {"url": self.receiver_url, "audience": self.audience or self.receiver_url}

    def set_receiver(self, values: Mapping[str, Any]) -> None:
        unknown = set(values) - {"url", "audience"}
        if unknown:
            raise KeyError(f"unknown receiver settings: {sorted(unknown)}")
        with self.lock:
            if "url" in values:
                self.receiver_url = values["url"] or None
            if "audience" in values:
                self.audience = values["audience"] or None

    def usage_report(self) -> dict[str, Any]:
        with self.lock:
            return self.usage()

    def notification_log(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.notifications)

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
        """Return (check error code, detail) when ``consumer_id`` may not use ``service``.

        A consumer may hold several entitlements (several orders of one product, or products):
        it may use the service while any of its entitlements for it is active.
        """
        matching = [e for e in self.entitlements.values() if e["usageReportingId"] == consumer_id]
        if not matching:
            return "CONSUMER_INVALID", f"Consumer {consumer_id!r} is invalid."
        if any(e["product"] == service and e["state"] in ACTIVE_STATES for e in matching):
            return None
        return "SERVICE_NOT_ACTIVATED", f"Service {service} is not activated for the consumer."

    def record_check(self, operation: Mapping[str, Any], problem: tuple[str, str] | None) -> None:
        """Remember a ``check`` (its operationId and verdict), so tests can see every report was checked first."""
        self.checks.append({"operationId": operation.get("operationId"), "consumerId": operation.get("consumerId"),
                            "passed": problem is None, "at": _rfc3339(self.now())})

    def set_included(self, contract: str, included: Mapping[str, int] | None) -> str:
        """Set the entitlement's commitments: the units of each metric its order includes
        (modeled; docs/marketplaces.md §4.11)."""
        entitlement = self.entitlements.get(contract)
        if entitlement is None:
            raise KeyError(contract)
        if included is None:
            return contract
        entitlement["commitments"] = [{"metric": name, "quantity": str(units)} for name, units in sorted(included.items())]
        entitlement["updateTime"] = _rfc3339(self.now())
        return contract

    def included_view(self) -> list[dict[str, Any]]:
        totals = self.usage()["totals"]
        out = []
        for entitlement_id, entitlement in self.entitlements.items():
            included = {c["metric"]: int(c["quantity"]) for c in entitlement.get("commitments") or []}
            if not included:
                continue
            reported: dict[str, int] = {}
            for row in totals:
                if row["consumer_id"] == entitlement["usageReportingId"]:
                    reported[row["dimension"]] = reported.get(row["dimension"], 0) + int(row["quantity"])
            out.append({"contract": entitlement_id, "included": included, "reported": reported})
        return out

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
            "checks": list(self.checks),
        }
