"""AWS Marketplace emulator: Metering and Entitlement services plus SNS/EventBridge lifecycle feeds.

It speaks the real wire protocols so the unmodified boto3 clients run against it:

- ``POST /`` with ``X-Amz-Target: AWSMPMeteringService.BatchMeterUsage`` (AWS JSON 1.1);
  ``AWSMPMeteringService.ResolveCustomer`` and ``AWSMPEntitlementService.GetEntitlements``
  are answered on the same path.
- ``POST /service/AWSMPEntitlementService/operation/GetEntitlements`` (Smithy RPC v2 CBOR,
  which is what current botocore sends for ``marketplace-entitlement``).

SigV4 is not checked; only the access key id is read from the ``Authorization`` header so a
configured "bad" key can be refused with ``UnrecognizedClientException``.

Rules (reference §1.9), each an option with the real default so tests can shrink them:
subscriptions keyed by (product, account id, license ARN) and by legacy customer identifier;
states active -> deprovisioning (``deprovision_window_seconds``) -> inactive; first write wins
per (product, subscription, dimension, hour) (identical resend answers
``identical_resend_status``, a different quantity ``DuplicateRecord``); at most
``max_records`` records and ``max_body_bytes`` per call; unknown dimension, bad license,
unknown customer identifier and out-of-window timestamps reject the whole batch; token-bucket
throttling at ``rate_limit_rps``; injected faults and ``UnprocessedRecords``.

Lifecycle: creating, modifying and canceling a subscription through the control API sends the
real notification: an SNS HTTP envelope signed with the emulator's own RSA key (its
self-signed certificate is served at ``/_emulator/sns/cert.pem``) and/or the EventBridge event
JSON, to the configured receiver URLs.

Control API (all JSON): ``POST /_emulator/reset``, ``GET|POST /_emulator/faults``,
``GET|POST /_emulator/options``, ``GET|POST /_emulator/clock`` (``{"now": iso | null}``),
``POST /_emulator/receiver`` (``{"url", "eventbridge_url", "eventbridge_headers"}``),
``GET|POST /_emulator/customers``, ``POST /_emulator/customers/<id>/cancel``,
``POST /_emulator/customers/<id>/entitlements``, ``POST /_emulator/tick``,
``GET /_emulator/usage``, ``GET /_emulator/notifications``, ``GET /_emulator/sns/cert.pem``,
``POST /_emulator/sns/sign``, ``POST /_emulator/sns/subscription-confirmation``,
``GET /_emulator/sns/confirmations``. ``AwsEmulatorClient`` wraps them for tests. The control
API needs no credentials, so it never echoes one: ``eventbridge_headers`` and the headers of sent
notifications (``Authorization`` and the like) are shown as ``***``.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import string
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping
from urllib.parse import urlencode

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Flask, Response, jsonify, request

from marketplaces.emulators.server import Faults, self_signed_certificate_pem

MAX_QUANTITY = 2_147_483_647
SELLER_ACCOUNT = "999988887777"
LICENSE_ACCOUNT = "294406891311"
MARKETPLACE_SNS_ACCOUNT = "287250355862"
CERT_PATH = "/_emulator/sns/cert.pem"

DEFAULT_OPTIONS: dict[str, Any] = {
    "max_age_seconds": 6 * 3600,  # current API reference: up to six hours in the past
    "future_skew_seconds": 300,  # catch clock skew: nothing more than 5 minutes ahead
    "deprovision_window_seconds": 3600,  # about one hour of final metering after cancel
    "identical_resend_status": "Success",  # or "DuplicateRecord"; AWS sources disagree
    "max_records": 25,
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

_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")
# Headers whose values are credentials: the control API shows them as "***", never echoes them.
_SECRET_HEADER = re.compile(r"authorization|cookie|api[-_]?key|token|secret|password", re.IGNORECASE)


class AwsError(Exception):
    """A request-level error answered in the AWS JSON error shape."""

    def __init__(self, type_: str, message: str, status: int = 400):
        super().__init__(message)
        self.type = type_
        self.message = message
        self.status = status


# --- time helpers --------------------------------------------------------------------------


def _utc(dt: datetime) -> datetime:
    return dt.astimezone(timezone.utc) if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso(dt: datetime, millis: bool = False) -> str:
    dt = _utc(dt)
    if millis:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(value: str) -> datetime:
    return _utc(datetime.fromisoformat(value.replace("Z", "+00:00")))


def _parse_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        return _utc(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if isinstance(value, str):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except ValueError:
            return _parse_iso(value)
    raise AwsError("ValidationException", f"invalid Timestamp {value!r}")


def _hour(dt: datetime) -> datetime:
    return dt.replace(minute=0, second=0, microsecond=0)


# --- a small CBOR codec (RFC 8949 subset botocore uses) --------------------------------------


def cbor_encode(value: Any) -> bytes:
    """Encode ``value`` as CBOR (maps, arrays, strings, numbers, booleans, null, datetimes)."""
    out = bytearray()
    _cbor_put(out, value)
    return bytes(out)


def _cbor_head(out: bytearray, major: int, length: int) -> None:
    if length < 24:
        out.append((major << 5) | length)
    elif length < 0x100:
        out += bytes([(major << 5) | 24, length])
    elif length < 0x10000:
        out.append((major << 5) | 25)
        out += struct.pack(">H", length)
    elif length < 0x100000000:
        out.append((major << 5) | 26)
        out += struct.pack(">I", length)
    else:
        out.append((major << 5) | 27)
        out += struct.pack(">Q", length)


def _cbor_put(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if value >= 0:
            _cbor_head(out, 0, value)
        else:
            _cbor_head(out, 1, -1 - value)
    elif isinstance(value, float):
        out.append(0xFB)
        out += struct.pack(">d", value)
    elif isinstance(value, datetime):
        out.append(0xC1)  # tag 1: epoch-based date/time
        _cbor_put(out, _utc(value).timestamp())
    elif isinstance(value, (bytes, bytearray)):
        _cbor_head(out, 2, len(value))
        out += value
    elif isinstance(value, str):
        data = value.encode("utf-8")
        _cbor_head(out, 3, len(data))
        out += data
    elif isinstance(value, (list, tuple)):
        _cbor_head(out, 4, len(value))
        for item in value:
            _cbor_put(out, item)
    elif isinstance(value, Mapping):
        _cbor_head(out, 5, len(value))
        for key, item in value.items():
            _cbor_put(out, key)
            _cbor_put(out, item)
    else:
        raise TypeError(f"cannot CBOR-encode {type(value).__name__}")


_BREAK = object()


def cbor_decode(data: bytes) -> Any:
    """Decode one CBOR data item (definite and indefinite lengths, tag 1 as datetime)."""
    stream = io.BytesIO(data)
    value = _cbor_get(stream)
    if value is _BREAK:
        raise ValueError("unexpected CBOR break")
    return value


def _cbor_read(stream: io.BytesIO, size: int) -> bytes:
    chunk = stream.read(size)
    if len(chunk) != size:
        raise ValueError("truncated CBOR")
    return chunk


def _cbor_length(stream: io.BytesIO, info: int) -> int | None:
    if info < 24:
        return info
    if info == 31:
        return None
    sizes = {24: 1, 25: 2, 26: 4, 27: 8}
    if info not in sizes:
        raise ValueError(f"bad CBOR additional info {info}")
    return int.from_bytes(_cbor_read(stream, sizes[info]), "big")


def _cbor_get(stream: io.BytesIO) -> Any:
    initial = _cbor_read(stream, 1)[0]
    major, info = initial >> 5, initial & 0x1F
    if initial == 0xFF:
        return _BREAK
    if major == 7:
        simple = {20: False, 21: True, 22: None, 23: None}
        if info in simple:
            return simple[info]
        formats = {25: (">e", 2), 26: (">f", 4), 27: (">d", 8)}
        if info not in formats:
            raise ValueError(f"unsupported CBOR simple value {info}")
        fmt, size = formats[info]
        return struct.unpack(fmt, _cbor_read(stream, size))[0]
    length = _cbor_length(stream, info)
    if major == 0:
        return length
    if major == 1:
        return -1 - (length or 0)
    if major in (2, 3):
        if length is None:
            parts = []
            while (part := _cbor_get(stream)) is not _BREAK:
                parts.append(part)
            joined = b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)
        else:
            joined = _cbor_read(stream, length)
        return joined if major == 2 else joined.decode("utf-8")
    if major == 4:
        items = []
        while length is None or len(items) < length:
            item = _cbor_get(stream)
            if item is _BREAK:
                break
            items.append(item)
        return items
    if major == 5:
        mapping: dict[Any, Any] = {}
        count = 0
        while length is None or count < length:
            key = _cbor_get(stream)
            if key is _BREAK:
                break
            mapping[key] = _cbor_get(stream)
            count += 1
        return mapping
    if major == 6:
        tagged = _cbor_get(stream)
        if length == 1 and isinstance(tagged, (int, float)):
            return datetime.fromtimestamp(tagged, tz=timezone.utc)
        return tagged
    raise ValueError(f"bad CBOR major type {major}")


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


class AwsEmulatorState:
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
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.options: dict[str, Any] = json.loads(json.dumps(self.initial_options))
            self.rng = random.Random(self.options["seed"])
            self.faults.reset()
            self.clock: datetime | None = None
            self.subscriptions: dict[str, Subscription] = {}
            self.products: dict[str, set[str]] = {}
            self.usage: dict[tuple[str, str, str, datetime], dict[str, Any]] = {}
            self.accepted: list[dict[str, Any]] = []
            self.sent: list[dict[str, Any]] = []
            self.confirmations: list[dict[str, Any]] = []
            self.bucket = TokenBucket(self.options["rate_limit_rps"], self.options["rate_limit_burst"])

    def now(self) -> datetime:
        return self.clock or datetime.now(timezone.utc)

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

    # -- lookups --

    def find_by_license(self, license_arn: str) -> Subscription | None:
        wanted = _license_id(license_arn)
        return self.subscriptions.get(wanted) if wanted else None

    def find_by_identifier(self, customer_identifier: str) -> Subscription | None:
        for sub in self.subscriptions.values():
            if sub.customer_identifier == customer_identifier:
                return sub
        return None


def _license_id(arn: str) -> str | None:
    match = re.search(r"(l-[0-9a-f]+)$", arn or "")
    return match.group(1) if match else None


def _self_signed_cert(key: rsa.RSAPrivateKey) -> bytes:
    return self_signed_certificate_pem(key, "sns.emulator.marketsync.local")


# --- SNS envelopes ----------------------------------------------------------------------------

_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = (
    "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
)


def sns_string_to_sign(envelope: Mapping[str, Any]) -> bytes:
    """Build the canonical SNS string to sign for ``envelope`` (reference §1.6)."""
    names = _NOTIFICATION_FIELDS if envelope.get("Type") == "Notification" else _CONFIRMATION_FIELDS
    lines = []
    for name in names:
        if name in envelope and envelope[name] is not None:
            lines.append(f"{name}\n{envelope[name]}\n")
    return "".join(lines).encode("utf-8")


def sign_envelope(
    key: rsa.RSAPrivateKey, envelope: dict[str, Any], cert_url: str, version: str = "2"
) -> dict[str, Any]:
    """Return a copy of ``envelope`` signed with ``key`` (SignatureVersion 1 or 2)."""
    signed = dict(envelope)
    signed["SignatureVersion"] = str(version)
    signed["SigningCertURL"] = cert_url
    digest = hashes.SHA1() if str(version) == "1" else hashes.SHA256()
    signature = key.sign(sns_string_to_sign(signed), padding.PKCS1v15(), digest)
    signed["Signature"] = base64.b64encode(signature).decode("ascii")
    return signed


# --- the app ----------------------------------------------------------------------------------


def create_aws_emulator(**options: Any) -> Flask:
    """Build the AWS Marketplace emulator app; ``options`` override ``DEFAULT_OPTIONS``."""
    app = Flask("aws_marketplace_emulator")
    state = AwsEmulatorState(options)
    app.extensions["aws_emulator"] = state

    def base_url() -> str:
        return (state.options.get("public_url") or request.host_url).rstrip("/")

    # -- wire protocol --

    @app.post("/")
    def json_rpc() -> Response:
        target = request.headers.get("X-Amz-Target", "")
        handlers = {
            "AWSMPMeteringService.BatchMeterUsage": _batch_meter_usage,
            "AWSMPMeteringService.ResolveCustomer": _resolve_customer,
            "AWSMPEntitlementService.GetEntitlements": _get_entitlements,
        }
        try:
            handler = handlers.get(target)
            if handler is None:
                raise AwsError("UnknownOperationException", f"unknown target {target!r}")
            _admit(state)
            body = request.get_data()
            if len(body) > state.options["max_body_bytes"]:
                raise AwsError("ValidationException", "request body must be smaller than 1 MB", 413)
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                raise AwsError("SerializationException", "body is not JSON") from None
            result = handler(state, params)
        except AwsError as err:
            return _json_error(err)
        return _json_response(result)

    @app.post("/service/<service>/operation/<operation>")
    def cbor_rpc(service: str, operation: str) -> Response:
        try:
            if (service, operation) != ("AWSMPEntitlementService", "GetEntitlements"):
                raise AwsError("UnknownOperationException", f"unknown operation {operation!r}")
            _admit(state)
            body = request.get_data()
            params = cbor_decode(body) if body else {}
            result = _get_entitlements(state, params)
        except AwsError as err:
            return _cbor_response(
                {"__type": err.type, "message": err.message}, err.status
            )
        except ValueError as err:
            return _cbor_response({"__type": "SerializationException", "message": str(err)}, 400)
        return _cbor_response(result, 200)

    @app.get("/")
    def confirm_subscription() -> Response:
        """Answer an SNS SubscribeURL (``?Action=ConfirmSubscription&TopicArn=&Token=``)."""
        if request.args.get("Action") != "ConfirmSubscription":
            return Response("unknown action", status=400)
        with state.lock:
            state.confirmations.append(
                {"topic_arn": request.args.get("TopicArn"), "token": request.args.get("Token"),
                 "at": _iso(state.now())}
            )
        arn = f"{request.args.get('TopicArn')}:{uuid.uuid4()}"
        xml = (
            "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>"
            f"{arn}</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
        )
        return Response(xml, content_type="text/xml")

    # -- control API --

    @app.post("/_emulator/reset")
    def reset() -> Response:
        state.reset()
        return jsonify({"ok": True})

    @app.route("/_emulator/faults", methods=["GET", "POST"])
    def faults() -> Response:
        if request.method == "POST":
            try:
                state.faults.update(**(request.get_json(force=True) or {}))
            except KeyError as err:
                return jsonify({"error": f"unknown fault {err.args[0]!r}"}), 400
        return jsonify(state.faults.as_dict())

    @app.route("/_emulator/options", methods=["GET", "POST"])
    def options_view() -> Response:
        if request.method == "POST":
            try:
                state.set_options(request.get_json(force=True) or {})
            except AwsError as err:
                return jsonify({"error": err.message}), 400
        with state.lock:
            shown = dict(state.options)
        shown["eventbridge_headers"] = _redacted_headers(state, shown["eventbridge_headers"] or {})
        return jsonify(shown)

    @app.route("/_emulator/clock", methods=["GET", "POST"])
    def clock() -> Response:
        deliveries: list[dict[str, Any]] = []
        if request.method == "POST":
            value = (request.get_json(force=True) or {}).get("now")
            with state.lock:
                state.clock = _parse_iso(value) if value else None
            # Moving time may close final-usage windows: send their unsubscribe-success now.
            deliveries = _finish_deprovisioning(state, base_url())
        return jsonify(
            {"now": _iso(state.now()), "fixed": state.clock is not None, "notifications": deliveries}
        )

    @app.post("/_emulator/receiver")
    def receiver() -> Response:
        body = request.get_json(force=True) or {}
        state.set_options(
            {
                name: body[key]
                for key, name in (
                    ("url", "receiver_url"),
                    ("eventbridge_url", "eventbridge_url"),
                    ("eventbridge_headers", "eventbridge_headers"),
                )
                if key in body
            }
        )
        return jsonify(
            {"url": state.options["receiver_url"], "eventbridge_url": state.options["eventbridge_url"]}
        )

    @app.route("/_emulator/customers", methods=["GET", "POST"])
    def customers() -> Response:
        if request.method == "GET":
            with state.lock:
                now, window = state.now(), state.window()
                return jsonify([s.as_dict(now, window) for s in state.subscriptions.values()])
        body = request.get_json(force=True) or {}
        try:
            sub = _create_subscription(state, body)
        except AwsError as err:
            return jsonify({"error": err.message}), 400
        deliveries = _notify(state, base_url(), sub, "created", body.get("notify"))
        with state.lock:
            out = sub.as_dict(state.now(), state.window())
        out["notifications"] = deliveries
        return jsonify(out), 201

    @app.post("/_emulator/customers/<sub_id>/cancel")
    def cancel(sub_id: str) -> Response:
        body = request.get_json(silent=True) or {}
        with state.lock:
            sub = _lookup(state, sub_id)
            if sub is None:
                return jsonify({"error": "no such subscription"}), 404
            now = state.now()
            if sub.canceled_at is None:
                sub.canceled_at = now
            if body.get("immediate"):
                sub.canceled_at = now - timedelta(seconds=state.window())
        deliveries = _notify(state, base_url(), sub, "canceled", body.get("notify"))
        deliveries += _finish_deprovisioning(state, base_url())
        with state.lock:
            out = sub.as_dict(state.now(), state.window())
        out["notifications"] = deliveries
        return jsonify(out)

    @app.post("/_emulator/customers/<sub_id>/entitlements")
    def entitlements(sub_id: str) -> Response:
        body = request.get_json(force=True) or {}
        with state.lock:
            sub = _lookup(state, sub_id)
            if sub is None:
                return jsonify({"error": "no such subscription"}), 404
            if "entitlements" in body:
                sub.entitlements = dict(body["entitlements"])
            if "expiration" in body:
                sub.expiration = _parse_iso(body["expiration"]) if body["expiration"] else None
            if "dimensions" in body:
                sub.dimensions = set(body["dimensions"])
                state.products.setdefault(sub.product_code, set()).update(sub.dimensions)
        deliveries = _notify(state, base_url(), sub, "modified", body.get("notify"))
        with state.lock:
            out = sub.as_dict(state.now(), state.window())
        out["notifications"] = deliveries
        return jsonify(out)

    @app.post("/_emulator/tick")
    def tick() -> Response:
        return jsonify({"notifications": _finish_deprovisioning(state, base_url())})

    @app.get("/_emulator/usage")
    def usage() -> Response:
        with state.lock:
            totals = [
                {**entry, "hour": _iso(entry["hour"])} for entry in state.usage.values()
            ]
            return jsonify({"totals": totals, "records": list(state.accepted)})

    @app.get("/_emulator/notifications")
    def notifications() -> Response:
        with state.lock:
            return jsonify(list(state.sent))

    @app.get(CERT_PATH)
    def cert() -> Response:
        return Response(state.cert_pem, content_type="application/x-pem-file")

    @app.post("/_emulator/sns/sign")
    def sign() -> Response:
        body = request.get_json(force=True) or {}
        envelope = body.get("envelope") or {}
        version = str(body.get("signature_version") or state.options["signature_version"])
        return jsonify(sign_envelope(state.key, envelope, base_url() + CERT_PATH, version))

    @app.post("/_emulator/sns/subscription-confirmation")
    def send_subscription_confirmation() -> Response:
        body = request.get_json(silent=True) or {}
        topic = body.get("topic_arn") or _topic_arn(state, "subscription", body.get("product_code") or "prod-emulator")
        token = uuid.uuid4().hex + uuid.uuid4().hex
        envelope = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": topic,
            "Message": (
                f"You have chosen to subscribe to the topic {topic}.\n"
                "To confirm the subscription, visit the SubscribeURL included in this message."
            ),
            "SubscribeURL": base_url() + "/?" + urlencode(
                {"Action": "ConfirmSubscription", "TopicArn": topic, "Token": token}
            ),
            "Timestamp": _iso(state.now(), millis=True),
        }
        return jsonify(_deliver_sns(state, base_url(), envelope, body.get("signature_version")))

    @app.get("/_emulator/sns/confirmations")
    def confirmations() -> Response:
        with state.lock:
            return jsonify(list(state.confirmations))

    return app


# --- responses ---------------------------------------------------------------------------------


def _json_response(payload: Any) -> Response:
    return Response(
        json.dumps(payload, default=_json_default),
        status=200,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).timestamp()
    raise TypeError(type(value).__name__)


def _json_error(err: AwsError) -> Response:
    if err.type == "ServiceUnavailable":
        return Response("Service Unavailable", status=503, content_type="text/plain")
    return Response(
        json.dumps({"__type": err.type, "message": err.message}),
        status=err.status,
        content_type="application/x-amz-json-1.1",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def _cbor_response(payload: Any, status: int) -> Response:
    return Response(
        cbor_encode(payload),
        status=status,
        content_type="application/cbor",
        headers={"smithy-protocol": "rpc-v2-cbor", "x-amzn-RequestId": str(uuid.uuid4())},
    )


def _admit(state: AwsEmulatorState) -> None:
    """Apply auth, faults and throttling to one API call (raise ``AwsError`` to refuse it)."""
    match = _ACCESS_KEY.search(request.headers.get("Authorization", ""))
    if match and match.group(1) in set(state.options["bad_access_keys"]):
        raise AwsError(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    fault = state.faults.draw()
    if fault == "outage":
        raise AwsError("ServiceUnavailable", "Service Unavailable", 503)
    if fault == "error":
        raise AwsError("InternalServiceErrorException", "An internal error occurred", 500)
    if fault == "throttle":
        raise AwsError("ThrottlingException", "Rate exceeded")
    with state.lock:
        if not state.bucket.take():
            raise AwsError("ThrottlingException", "Rate exceeded")


# --- metering -----------------------------------------------------------------------------------


def _batch_meter_usage(state: AwsEmulatorState, params: Mapping[str, Any]) -> dict[str, Any]:
    records = params.get("UsageRecords")
    if not isinstance(records, list) or not records:
        raise AwsError("ValidationException", "UsageRecords must be a non-empty list")
    if len(records) > state.options["max_records"]:
        raise AwsError(
            "ValidationException",
            f"1 validation error detected: Value at 'usageRecords' failed to satisfy constraint: "
            f"Member must have length less than or equal to {state.options['max_records']}",
        )
    product_code = params.get("ProductCode")
    with state.lock:
        now = state.now()
        # Validate the whole batch first: any request-level problem rejects every record.
        resolved = [_resolve_record(state, product_code, rec, now) for rec in records]
        results: list[dict[str, Any]] = []
        unprocessed: list[dict[str, Any]] = []
        for rec, (sub, product, timestamp) in zip(records, resolved):
            if state.options["unprocessed_rate"] and state.rng.random() < state.options["unprocessed_rate"]:
                unprocessed.append(rec)
                continue
            results.append(_meter_one(state, rec, sub, product, timestamp, now))
    return {"Results": results, "UnprocessedRecords": unprocessed}


def _resolve_record(
    state: AwsEmulatorState, product_code: str | None, rec: Mapping[str, Any], now: datetime
) -> tuple[Subscription | None, str, datetime]:
    """Check one record against the request-level rules; return (subscription, product, time)."""
    if not isinstance(rec, Mapping):
        raise AwsError("ValidationException", "each usage record must be an object")
    if "Timestamp" not in rec or not rec.get("Dimension"):
        raise AwsError("ValidationException", "Timestamp and Dimension are required")
    identifier = rec.get("CustomerIdentifier")
    account = rec.get("CustomerAWSAccountId")
    license_arn = rec.get("LicenseArn")
    if bool(identifier) == bool(account):
        raise AwsError(
            "ValidationException",
            "exactly one of CustomerIdentifier and CustomerAWSAccountId is required",
        )
    quantity = rec.get("Quantity", 0)
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 0 <= quantity <= MAX_QUANTITY:
        raise AwsError("ValidationException", f"Quantity must be an integer in 0..{MAX_QUANTITY}")

    sub: Subscription | None = None
    if identifier:
        sub = state.find_by_identifier(identifier)
        if sub is None:
            raise AwsError(
                "InvalidCustomerIdentifierException", f"unknown customer identifier {identifier}"
            )
        if license_arn and state.find_by_license(license_arn) is not sub:
            raise AwsError("InvalidLicenseException", f"license {license_arn} does not match the customer")
    elif license_arn:
        sub = state.find_by_license(license_arn)
        if sub is None or sub.customer_aws_account_id != account:
            raise AwsError("InvalidLicenseException", f"invalid license {license_arn} for account {account}")
    else:
        product = product_code
        matches = [
            s for s in state.subscriptions.values()
            if s.customer_aws_account_id == account and (product is None or s.product_code == product)
        ]
        if len(matches) > 1:
            raise AwsError("InvalidLicenseException", "LicenseArn is required: the account holds several licenses")
        sub = matches[0] if matches else None

    product = product_code or (sub.product_code if sub else None)
    if not product or product not in state.products:
        raise AwsError("InvalidProductCodeException", f"unknown product code {product!r}")
    if sub is not None and sub.product_code != product:
        if license_arn:
            raise AwsError("InvalidLicenseException", f"license {license_arn} is not for product {product}")
        sub = None  # the customer exists but is not subscribed to this product
    if rec["Dimension"] not in state.products[product]:
        raise AwsError("InvalidUsageDimensionException", f"dimension {rec['Dimension']!r} is not defined for {product}")

    timestamp = _parse_timestamp(rec["Timestamp"])
    max_age = timedelta(seconds=float(state.options["max_age_seconds"]))
    skew = timedelta(seconds=float(state.options["future_skew_seconds"]))
    if timestamp <= now - max_age or timestamp > now + skew:
        raise AwsError("TimestampOutOfBoundsException", "Timestamp is out of the allowed range")
    if sub is not None and license_arn and timestamp < _hour(sub.started_at):
        raise AwsError("InvalidLicenseException", "usage is outside the license activation period")

    allocations = rec.get("UsageAllocations")
    if allocations is not None:
        _check_allocations(allocations, quantity)
    return sub, product, timestamp


def _check_allocations(allocations: Any, quantity: int) -> None:
    if not isinstance(allocations, list) or not 1 <= len(allocations) <= 2500:
        raise AwsError("InvalidUsageAllocationsException", "UsageAllocations must hold 1..2500 items")
    seen: set[tuple[tuple[str, str], ...]] = set()
    total = 0
    for alloc in allocations:
        tags = alloc.get("Tags") or []
        if len(tags) > 5:
            raise AwsError("InvalidTagException", "at most 5 tags per allocation")
        for tag in tags:
            if not re.fullmatch(r"[a-zA-Z0-9+ -=._:/@]{1,256}", str(tag.get("Value", ""))) or not (
                1 <= len(str(tag.get("Key", ""))) <= 100
            ):
                raise AwsError("InvalidTagException", f"invalid tag {tag!r}")
        tag_set = tuple(sorted((t["Key"], t["Value"]) for t in tags))
        if tag_set in seen:
            raise AwsError("InvalidUsageAllocationsException", "each allocation needs a unique tag set")
        seen.add(tag_set)
        total += int(alloc.get("AllocatedUsageQuantity", -1))
    if total != quantity:
        raise AwsError("InvalidUsageAllocationsException", "allocations must sum to Quantity")


def _meter_one(
    state: AwsEmulatorState,
    rec: Mapping[str, Any],
    sub: Subscription | None,
    product: str,
    timestamp: datetime,
    now: datetime,
) -> dict[str, Any]:
    echo = dict(rec)
    if sub is None or sub.state(now, state.window()) == "inactive":
        return {"UsageRecord": echo, "Status": "CustomerNotSubscribed"}
    quantity = int(rec.get("Quantity", 0))
    hour = _hour(timestamp)
    slot = (product, sub.id, rec["Dimension"], hour)
    existing = state.usage.get(slot)
    if existing is not None:
        # First write wins; AWS never accumulates records for one customer/dimension/hour.
        status = (
            state.options["identical_resend_status"]
            if existing["quantity"] == quantity
            else "DuplicateRecord"
        )
        return {"UsageRecord": echo, "MeteringRecordId": existing["metering_record_id"], "Status": status}
    record_id = str(uuid.uuid4())
    entry = {
        "product_code": product,
        "subscription_id": sub.id,
        "customer_aws_account_id": sub.customer_aws_account_id,
        "license_arn": sub.license_arn,
        "customer_identifier": sub.customer_identifier,
        "dimension": rec["Dimension"],
        "hour": hour,
        "quantity": quantity,
        "metering_record_id": record_id,
    }
    state.usage[slot] = entry
    state.accepted.append(
        {**entry, "hour": _iso(hour), "timestamp": _iso(timestamp), "received_at": _iso(now), "request": echo}
    )
    return {"UsageRecord": echo, "MeteringRecordId": record_id, "Status": "Success"}


def _resolve_customer(state: AwsEmulatorState, params: Mapping[str, Any]) -> dict[str, Any]:
    token = params.get("RegistrationToken") or ""
    with state.lock:
        sub = state.subscriptions.get(token)
        if sub is None:
            raise AwsError("InvalidTokenException", "registration token is invalid")
        out = {
            "CustomerAWSAccountId": sub.customer_aws_account_id,
            "ProductCode": sub.product_code,
            "LicenseArn": sub.license_arn,
        }
        if sub.customer_identifier:
            out["CustomerIdentifier"] = sub.customer_identifier
        return out


def _get_entitlements(state: AwsEmulatorState, params: Mapping[str, Any]) -> dict[str, Any]:
    product = params.get("ProductCode")
    if not product:
        raise AwsError("InvalidParameterException", "ProductCode is required")
    filters = params.get("Filter") or {}
    if "CUSTOMER_IDENTIFIER" in filters and "CUSTOMER_AWS_ACCOUNT_ID" in filters:
        raise AwsError(
            "InvalidParameterException",
            "CUSTOMER_IDENTIFIER and CUSTOMER_AWS_ACCOUNT_ID are mutually exclusive",
        )
    page_size = int(params.get("MaxResults") or state.options["entitlement_page_size"])
    if not 1 <= page_size <= 25:
        raise AwsError("InvalidParameterException", "MaxResults must be in 1..25")
    token = params.get("NextToken")
    with state.lock:
        rows = []
        for sub in state.subscriptions.values():
            if sub.product_code != product:
                continue
            for dimension, value in sorted(sub.entitlements.items()):
                row = {
                    "ProductCode": product,
                    "Dimension": dimension,
                    "CustomerAWSAccountId": sub.customer_aws_account_id,
                    "LicenseArn": sub.license_arn,
                    "Value": _entitlement_value(value),
                }
                if sub.customer_identifier:
                    row["CustomerIdentifier"] = sub.customer_identifier
                if sub.expiration:
                    row["ExpirationDate"] = sub.expiration
                if _matches(row, filters):
                    rows.append(row)
        empty_first = state.options["empty_first_entitlement_page"]
    if token is None and empty_first:
        return {"Entitlements": [], "NextToken": "page:0"}
    start = 0
    if token is not None:
        try:
            start = int(str(token).split(":", 1)[1])
        except (IndexError, ValueError):
            raise AwsError("InvalidParameterException", "invalid NextToken") from None
    page = rows[start:start + page_size]
    out: dict[str, Any] = {"Entitlements": page}
    if start + page_size < len(rows):
        out["NextToken"] = f"page:{start + page_size}"
    return out


def _entitlement_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BooleanValue": value}
    if isinstance(value, int):
        return {"IntegerValue": value}
    if isinstance(value, float):
        return {"DoubleValue": value}
    return {"StringValue": str(value)}


def _matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    fields = {
        "CUSTOMER_IDENTIFIER": "CustomerIdentifier",
        "CUSTOMER_AWS_ACCOUNT_ID": "CustomerAWSAccountId",
        "LICENSE_ARN": "LicenseArn",
        "DIMENSION": "Dimension",
    }
    for name, values in filters.items():
        column = fields.get(name)
        if column is None:
            raise AwsError("InvalidParameterException", f"unknown filter {name}")
        if row.get(column) not in set(values or []):
            return False
    return True


# --- lifecycle -----------------------------------------------------------------------------------


def _rand(state: AwsEmulatorState, alphabet: str, size: int) -> str:
    return "".join(state.rng.choice(alphabet) for _ in range(size))


def _create_subscription(state: AwsEmulatorState, body: Mapping[str, Any]) -> Subscription:
    with state.lock:
        product = body.get("product_code") or "prod-emulator"
        dimensions = set(body.get("dimensions") or ["usage_fee"])
        account = body.get("customer_aws_account_id") or _rand(state, string.digits, 12)
        license_arn = body.get("license_arn") or (
            f"arn:aws:license-manager::{LICENSE_ACCOUNT}:license:l-{_rand(state, '0123456789abcdef', 32)}"
        )
        sub_id = _license_id(license_arn)
        if sub_id is None:
            raise AwsError("ValidationException", "license_arn must end with l-<hex>")
        if sub_id in state.subscriptions:
            raise AwsError("ValidationException", f"license {sub_id} already exists")
        identifier = body.get("customer_identifier")
        if identifier is None and body.get("legacy_identifier", True):
            identifier = _rand(state, string.ascii_letters + string.digits, 11)
        now = state.now()
        started = body.get("started_at")
        sub = Subscription(
            id=sub_id,
            product_code=product,
            customer_aws_account_id=account,
            license_arn=license_arn,
            customer_identifier=identifier or None,
            agreement_id="agmt-" + _rand(state, string.ascii_lowercase + string.digits, 25),
            offer_id=body.get("offer_id") or "offer-" + _rand(state, string.ascii_lowercase + string.digits, 13),
            dimensions=dimensions,
            started_at=_parse_iso(started) if started else now - timedelta(days=1),
            entitlements=dict(body.get("entitlements") or {}),
            expiration=_parse_iso(body["expiration"]) if body.get("expiration") else None,
            free_trial=bool(body.get("free_trial", False)),
        )
        state.subscriptions[sub_id] = sub
        state.products.setdefault(product, set()).update(dimensions)
        return sub


def _lookup(state: AwsEmulatorState, sub_id: str) -> Subscription | None:
    return state.subscriptions.get(sub_id) or state.find_by_license(sub_id) or state.find_by_identifier(sub_id)


def _topic_arn(state: AwsEmulatorState, kind: str, product: str) -> str:
    region = state.options["region"]
    return f"arn:aws:sns:{region}:{MARKETPLACE_SNS_ACCOUNT}:aws-mp-{kind}-notification-{product}"


def _channels(state: AwsEmulatorState, notify: str | None) -> set[str]:
    if notify is None:
        chosen = set()
        if state.options["receiver_url"]:
            chosen.add("sns")
        if state.options["eventbridge_url"]:
            chosen.add("eventbridge")
        return chosen
    return {"sns", "eventbridge"} if notify == "both" else ({notify} - {"none"})


def _sns_message(sub: Subscription, action: str) -> dict[str, Any]:
    message: dict[str, Any] = {"action": action}
    if sub.customer_identifier:
        message["customer-identifier"] = sub.customer_identifier
    message["product-code"] = sub.product_code
    # Not documented for SNS: we add the Concurrent Agreements identifiers so a receiver can
    # map the message to a license (parsers must not require them).
    message["customer-aws-account-id"] = sub.customer_aws_account_id
    message["license-arn"] = sub.license_arn
    if action in ("subscribe-success", "subscribe-fail"):
        message["offer-identifier"] = sub.offer_id
        message["isFreeTrialTermPresent"] = "true" if sub.free_trial else "false"
    return message


def _notify(
    state: AwsEmulatorState, base: str, sub: Subscription, event: str, notify: str | None
) -> list[dict[str, Any]]:
    """Send the notifications a lifecycle ``event`` produces; return the delivery log entries."""
    channels = _channels(state, notify)
    deliveries: list[dict[str, Any]] = []
    if "sns" in channels:
        action, topic = {
            "created": ("subscribe-success", "subscription"),
            "failed": ("subscribe-fail", "subscription"),
            "canceled": ("unsubscribe-pending", "subscription"),
            "finished": ("unsubscribe-success", "subscription"),
            "modified": ("entitlement-updated", "entitlement"),
        }[event]
        deliveries.append(_deliver_sns(state, base, _notification(state, sub, action, topic), None))
    if "eventbridge" in channels:
        detail_types = {
            "created": ["Purchase Agreement Created - Proposer", "License Updated - Manufacturer"],
            "failed": [],
            "canceled": ["Purchase Agreement Ended - Proposer", "License Deprovisioned - Manufacturer"],
            "finished": [],
            "modified": ["Purchase Agreement Amended - Proposer", "License Updated - Manufacturer"],
        }[event]
        for detail_type in detail_types:
            deliveries.append(_deliver_eventbridge(state, _event(state, sub, detail_type)))
    return deliveries


def _notification(state: AwsEmulatorState, sub: Subscription, action: str, topic_kind: str) -> dict[str, Any]:
    topic = _topic_arn(state, topic_kind, sub.product_code)
    with state.lock:
        now = state.now()
    return {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": json.dumps(_sns_message(sub, action), separators=(",", ":")),
        "Timestamp": _iso(now, millis=True),
        "UnsubscribeURL": None,  # filled in by _deliver_sns (needs the base URL)
    }


def _deliver_sns(
    state: AwsEmulatorState, base: str, envelope: dict[str, Any], version: str | None
) -> dict[str, Any]:
    envelope = dict(envelope)
    if envelope.get("Type") == "Notification":
        envelope["UnsubscribeURL"] = base + "/?" + urlencode(
            {"Action": "Unsubscribe", "SubscriptionArn": f"{envelope['TopicArn']}:{uuid.uuid4()}"}
        )
    signed = sign_envelope(
        state.key, envelope, base + CERT_PATH, str(version or state.options["signature_version"])
    )
    headers = {
        "x-amz-sns-message-type": signed["Type"],
        "x-amz-sns-message-id": signed["MessageId"],
        "x-amz-sns-topic-arn": signed["TopicArn"],
        "Content-Type": "text/plain; charset=UTF-8",
        "User-Agent": "Amazon Simple Notification Service Agent",
    }
    if signed["Type"] == "Notification":
        headers["x-amz-sns-subscription-arn"] = f"{signed['TopicArn']}:{uuid.uuid4()}"
    body = json.dumps(signed, indent=2)
    return _post(state, "sns", state.options["receiver_url"], headers, body)


def _event(state: AwsEmulatorState, sub: Subscription, detail_type: str) -> dict[str, Any]:
    with state.lock:
        now = state.now()
    detail: dict[str, Any] = {
        "requestId": str(uuid.uuid4()),
        "catalog": "AWSMarketplace",
        "agreement": {"id": sub.agreement_id},
        "acceptor": {"accountId": sub.customer_aws_account_id},
        "proposer": {"accountId": SELLER_ACCOUNT},
        "offer": {"id": sub.offer_id},
    }
    if detail_type.startswith("License"):
        detail["product"] = {"code": sub.product_code, "id": "prod-" + sub.product_code[-13:]}
        detail["license"] = {"arn": sub.license_arn}
    elif detail_type.startswith("Purchase Agreement Ended"):
        detail["agreement"]["status"] = "CANCELLED"
    else:
        intent = "AMEND" if "Amended" in detail_type else "NEW"
        detail["agreement"].update(
            {"intent": intent, "status": "ACTIVE", "acceptanceTime": _iso(sub.started_at),
             "startTime": _iso(sub.started_at)}
        )
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": "aws.agreement-marketplace",
        "account": SELLER_ACCOUNT,
        "time": _iso(now),
        "region": state.options["region"],
        "resources": [f"arn:aws:aws-marketplace::aws:agreement:{sub.agreement_id}"],
        "detail": detail,
    }


def _deliver_eventbridge(state: AwsEmulatorState, event: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **dict(state.options["eventbridge_headers"] or {})}
    return _post(state, "eventbridge", state.options["eventbridge_url"], headers, json.dumps(event))


def _redacted_headers(state: AwsEmulatorState, headers: Mapping[str, str]) -> dict[str, str]:
    """Return ``headers`` with credential values (and every configured EventBridge header) as ``***``."""
    configured = {name.lower() for name in (state.options["eventbridge_headers"] or {})}
    return {name: "***" if name.lower() in configured or _SECRET_HEADER.search(name) else value
            for name, value in headers.items()}


def _post(state: AwsEmulatorState, channel: str, url: str | None, headers: dict[str, str], body: str) -> dict[str, Any]:
    # The delivery log is served by the unauthenticated control API: it keeps the headers redacted.
    entry: dict[str, Any] = {"channel": channel, "url": url, "headers": _redacted_headers(state, headers),
                             "body": body, "status": None, "error": None}
    if url:
        try:
            answer = requests.post(url, data=body.encode("utf-8"), headers=headers, timeout=10)
            entry["status"] = answer.status_code
        except requests.RequestException as err:
            entry["error"] = f"{type(err).__name__}: {err}"
    else:
        entry["error"] = "no receiver configured"
    with state.lock:
        state.sent.append(entry)
    return entry


def _finish_deprovisioning(state: AwsEmulatorState, base: str) -> list[dict[str, Any]]:
    """Send ``unsubscribe-success`` for every subscription whose final window has closed."""
    with state.lock:
        now, window = state.now(), state.window()
        done = [
            s for s in state.subscriptions.values()
            if s.state(now, window) == "inactive" and not s.unsubscribe_sent
        ]
        for sub in done:
            sub.unsubscribe_sent = True
    deliveries: list[dict[str, Any]] = []
    for sub in done:
        if "sns" in _channels(state, None):
            deliveries += _notify(state, base, sub, "finished", "sns")
    return deliveries


# --- a client for tests and the CLI ------------------------------------------------------------


class AwsEmulatorClient:
    """Drive a running AWS emulator's control API (``base_url`` like ``http://127.0.0.1:8101``)."""

    def __init__(self, base_url: str, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.http = session or requests.Session()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.http.request(method, self.base_url + path, json=body, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/faults", faults)

    def set_options(self, **options: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/options", options)

    def set_clock(self, now: datetime | None) -> dict[str, Any]:
        return self._call("POST", "/_emulator/clock", {"now": _iso(now) if now else None})

    def set_receiver(self, url: str | None = None, eventbridge_url: str | None = None,
                     eventbridge_headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url, "eventbridge_url": eventbridge_url}
        if eventbridge_headers is not None:
            body["eventbridge_headers"] = dict(eventbridge_headers)
        return self._call("POST", "/_emulator/receiver", body)

    def create_customer(self, **fields: Any) -> dict[str, Any]:
        """Create a subscription; return the emulator's view (``identifiers``, ``id``, ...)."""
        return self._call("POST", "/_emulator/customers", fields)

    def cancel(self, sub_id: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", f"/_emulator/customers/{sub_id}/cancel", fields)

    def update_entitlements(self, sub_id: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", f"/_emulator/customers/{sub_id}/entitlements", fields)

    def tick(self) -> dict[str, Any]:
        return self._call("POST", "/_emulator/tick")

    def usage(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/usage")

    def notifications(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_emulator/notifications")

    def sign(self, envelope: Mapping[str, Any], signature_version: str = "2") -> dict[str, Any]:
        return self._call(
            "POST", "/_emulator/sns/sign",
            {"envelope": dict(envelope), "signature_version": signature_version},
        )

    def send_subscription_confirmation(self, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/sns/subscription-confirmation", fields)

    def confirmations(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_emulator/sns/confirmations")

    def usage_total(self, identifiers: Mapping[str, str], dimension: str, hour: datetime) -> int:
        """Return the accepted quantity for one subscription, dimension and hour (0 if none)."""
        wanted_hour = _iso(_hour(_utc(hour)))
        for entry in self.usage()["totals"]:
            if entry["dimension"] != dimension or entry["hour"] != wanted_hour:
                continue
            if identifiers.get("license_arn"):
                if _license_id(entry["license_arn"]) == _license_id(identifiers["license_arn"]):
                    return int(entry["quantity"])
            elif entry["customer_identifier"] == identifiers.get("customer_identifier"):
                return int(entry["quantity"])
        return 0


__all__ = [
    "AwsEmulatorClient",
    "AwsEmulatorState",
    "DEFAULT_OPTIONS",
    "cbor_decode",
    "cbor_encode",
    "create_aws_emulator",
    "sign_envelope",
    "sns_string_to_sign",
]
