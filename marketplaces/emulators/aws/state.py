"""What the AWS emulator knows: options, subscriptions, accepted usage, sent notifications."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from cryptography.hazmat.primitives.asymmetric import rsa

from marketplaces.emulators.aws.wire import AwsError, _iso
from marketplaces.emulators.server import ControlDefaults, Faults, self_signed_certificate_pem


DEFAULT_OPTIONS: dict[str, Any] = {
    "max_age_seconds": 6 * 3600,  # current API reference: up to six hours in the past
    "future_skew_seconds": 300,  # catch clock skew: nothing more than 5 minutes ahead
    "deprovision_window_seconds": 3600,  # about one hour of final metering after cancel
    "identical_resend_status": "Success",  # or "DuplicateRecord"; AWS sources disagree
    "max_records": 25,
    "one_product_per_call": True,  # records of two products in one call fail the whole call
    "max_body_bytes": 1024 * 1024,
    "rate_limit_rps": 10.0,  # BatchMeterUsage quota per account and region; 0 disables
    "rate_limit_burst": None,  # bucket size (default: one second's worth of requests)
    "unprocessed_rate": 0.0,  # share of records answered as UnprocessedRecords
    "bad_access_keys": [],
    "signature_version": "2",
    "region": "us-east-1",
    "entitlement_page_size": 25,
    "empty_first_entitlement_page": False,  # a page may be empty yet carry a NextToken
    "public_url": None,  # base URL written into SigningCertURL/SubscribeURL (default: request host)
    "receiver_url": None,  # SNS HTTP endpoint
    "eventbridge_url": None,  # where EventBridge events are POSTed
    "eventbridge_headers": {},  # e.g. the shared-secret header an API destination adds
    "seed": None,
}


# Headers whose values are credentials: the control API shows them as "***", never echoes them.
_SECRET_HEADER = re.compile(r"authorization|cookie|api[-_]?key|token|secret|password", re.IGNORECASE)


# --- state -----------------------------------------------------------------------------------


@dataclass
class Subscription:
    id: str  # the license id, l-<hex>
    product_code: str
    customer_aws_account_id: str
    license_arn: str
    customer_identifier: str | None
    agreement_id: str
    offer_id: str
    dimensions: set[str]
    started_at: datetime
    entitlements: dict[str, Any] = field(default_factory=dict)
    expiration: datetime | None = None
    free_trial: bool = False
    canceled_at: datetime | None = None
    unsubscribe_sent: bool = False

    def state(self, now: datetime, window: float) -> str:
        """Return ``active``, ``deprovisioning`` or ``inactive`` at ``now``."""
        if self.canceled_at is None:
            return "active"
        if now < self.canceled_at + timedelta(seconds=window):
            return "deprovisioning"
        return "inactive"

    def identifiers(self) -> dict[str, str]:
        ids = {
            "product_code": self.product_code,
            "customer_aws_account_id": self.customer_aws_account_id,
            "license_arn": self.license_arn,
        }
        if self.customer_identifier:
            ids["customer_identifier"] = self.customer_identifier
        return ids

    def as_dict(self, now: datetime, window: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "identifiers": self.identifiers(),
            "agreement_id": self.agreement_id,
            "offer_id": self.offer_id,
            "dimensions": sorted(self.dimensions),
            "started_at": _iso(self.started_at),
            "canceled_at": _iso(self.canceled_at) if self.canceled_at else None,
            "state": self.state(now, window),
            "entitlements": self.entitlements,
            "expiration": _iso(self.expiration) if self.expiration else None,
        }


class TokenBucket:
    """Allow ``rate`` requests per second with bursts of ``burst`` (default ``rate``; 0 disables)."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class AwsEmulatorState(ControlDefaults):
    """Everything the emulator knows, behind one lock."""

    def __init__(self, options: Mapping[str, Any]):
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise KeyError(f"unknown AWS emulator options: {sorted(unknown)}")
        self.initial_options = {**DEFAULT_OPTIONS, **options}
        self.lock = threading.RLock()
        self.faults = Faults()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cert_pem = _self_signed_cert(self.key)
        # Sends the notifications of final-usage windows that closed (set by ``create_app``: the
        # notifications module builds on this state, so the state does not import it).
        self.close_windows: Callable[[AwsEmulatorState, str], list[dict[str, Any]]] = lambda state, base: []
        self.reset()

    def reset(self, options: Mapping[str, Any] | None = None) -> None:
        """Forget everything but the signing key; ``options`` override the creation options."""
        unknown = set(options or {}) - set(DEFAULT_OPTIONS)
        if unknown:
            raise KeyError(f"unknown AWS emulator options: {sorted(unknown)}")
        with self.lock:
            self.options: dict[str, Any] = json.loads(json.dumps({**self.initial_options, **(options or {})}))
            self.rng = random.Random(self.options["seed"])
            self.faults.reset()
            self.fixed_now: datetime | None = None
            self.subscriptions: dict[str, Subscription] = {}
            self.products: dict[str, set[str]] = {}
            self.usage: dict[tuple[str, str, str, datetime], dict[str, Any]] = {}
            self.accepted: list[dict[str, Any]] = []
            self.sent: list[dict[str, Any]] = []
            self.confirmations: list[dict[str, Any]] = []
            self.bucket = TokenBucket(self.options["rate_limit_rps"], self.options["rate_limit_burst"])

    def now(self) -> datetime:
        return self.fixed_now or datetime.now(timezone.utc)

    def set_options(self, values: Mapping[str, Any]) -> None:
        with self.lock:
            for name, value in values.items():
                if name not in DEFAULT_OPTIONS:
                    raise AwsError("ValidationException", f"unknown option {name!r}")
                self.options[name] = value
            if "rate_limit_rps" in values:
                self.bucket = TokenBucket(self.options["rate_limit_rps"], self.options["rate_limit_burst"])
            if values.get("seed") is not None:
                self.rng.seed(values["seed"])

    def window(self) -> float:
        return float(self.options["deprovision_window_seconds"])

    # -- the shared control API (marketplaces.emulators.control) --

    def wire_time(self, moment: datetime) -> str:
        return _iso(moment)

    def clock_moved(self, base_url: str) -> dict[str, Any]:
        """Moving time may close final-usage windows: send their unsubscribe-success now."""
        return {"notifications": self.close_windows(self, self.options.get("public_url") or base_url)}

    def receiver_view(self) -> dict[str, Any]:
        with self.lock:
            return {"url": self.options["receiver_url"], "eventbridge_url": self.options["eventbridge_url"],
                    "eventbridge_headers": _redacted_headers(self, self.options["eventbridge_headers"] or {})}

    def set_receiver(self, values: Mapping[str, Any]) -> None:
        names = {"url": "receiver_url", "eventbridge_url": "eventbridge_url", "eventbridge_headers": "eventbridge_headers"}
        unknown = set(values) - set(names)
        if unknown:
            raise KeyError(f"unknown receiver settings: {sorted(unknown)}")
        self.set_options({names[key]: (value or None) if key != "eventbridge_headers" else dict(value or {})
                          for key, value in values.items()})

    def usage_report(self) -> dict[str, Any]:
        with self.lock:
            totals = [{**entry, "hour": _iso(entry["hour"])} for entry in self.usage.values()]
            return {"totals": totals, "records": list(self.accepted)}

    def notification_log(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.sent)

    def set_included(self, contract: str, included: Mapping[str, int] | None) -> str:
        """Set the license's integer entitlements (GetEntitlements' IntegerValue per dimension)."""
        sub = self.find_by_license(contract) or self.subscriptions.get(contract)
        if sub is None:
            raise KeyError(contract)
        if included is not None:
            sub.entitlements = {**{k: v for k, v in sub.entitlements.items() if not _units(v)}, **included}
        return sub.id

    def included_view(self) -> list[dict[str, Any]]:
        out = []
        for sub in self.subscriptions.values():
            included = {k: v for k, v in sub.entitlements.items() if _units(v)}
            if not included:
                continue
            reported: dict[str, int] = {}
            for entry in self.usage.values():
                if entry["subscription_id"] == sub.id:
                    reported[entry["dimension"]] = reported.get(entry["dimension"], 0) + int(entry["quantity"])
            out.append({"contract": sub.id, "included": included, "reported": reported})
        return out

    # -- lookups --

    def find_by_license(self, license_arn: str) -> Subscription | None:
        wanted = _license_id(license_arn)
        return self.subscriptions.get(wanted) if wanted else None

    def find_by_identifier(self, customer_identifier: str) -> Subscription | None:
        for sub in self.subscriptions.values():
            if sub.customer_identifier == customer_identifier:
                return sub
        return None


def _units(value: Any) -> bool:
    """Whether an entitlement value is a count of units (IntegerValue), not a flag or a text."""
    return isinstance(value, int) and not isinstance(value, bool)


def _license_id(arn: str) -> str | None:
    match = re.search(r"(l-[0-9a-f]+)$", arn or "")
    return match.group(1) if match else None


def _self_signed_cert(key: rsa.RSAPrivateKey) -> bytes:
    return self_signed_certificate_pem(key, "sns.emulator.marketsync.local")


def _redacted_headers(state: AwsEmulatorState, headers: Mapping[str, str]) -> dict[str, str]:
    """Return ``headers`` with credential values (and every configured EventBridge header) as ``***``."""
    configured = {name.lower() for name in (state.options["eventbridge_headers"] or {})}
    return {name: "***" if name.lower() in configured or _SECRET_HEADER.search(name) else value
            for name, value in headers.items()}
