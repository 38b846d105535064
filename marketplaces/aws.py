"""AWS Marketplace adapter: BatchMeterUsage, GetEntitlements, SNS and EventBridge lifecycle feeds.

``AwsMarketplace`` takes its boto3 clients in the constructor; ``build_aws_adapter(settings)``
builds them (pointed at the emulator in sandbox mode, at AWS in live mode).

Reporting (reference §1.2): records are grouped by product code and sent in chunks of at most
25. Per-record statuses become ``Outcome`` values; ``UnprocessedRecords`` are resent a few
times, then come back ``FAILED``. A request-level error that concerns a record (bad dimension,
timestamp out of window, bad license, ...) rejects the whole call, so the chunk is split in
halves until the bad records are isolated and the good ones go through. Throttling, 5xx,
timeouts and connection errors raise ``TransientMarketplaceError`` (after botocore's own
retries); configuration and auth errors raise ``PermanentMarketplaceError``.

Notifications (reference §1.5-§1.7): SNS HTTP envelopes are verified (SignatureVersion 1 or 2
against the signing certificate, whose URL must be on an SNS host; in sandbox mode only the
emulator's certificate URL is trusted). EventBridge events carry no signature: the receiver
authenticates them (shared-secret header) before calling ``parse_eventbridge``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import requests

from marketplaces.base import (
    MarketplaceRules,
    ContractNotification,
    MalformedNotification,
    Marketplace,
    NotificationKind,
    Outcome,
    OutcomeStatus,
    PermanentMarketplaceError,
    TransientMarketplaceError,
    UnverifiedNotification,
    UsageRecord,
)

MAX_BATCH = 25
MAX_QUANTITY = 2_147_483_647
MAX_REQUEST_BYTES = 1024 * 1024
EVENTBRIDGE_SOURCE = "aws.agreement-marketplace"
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
CERT_PATH = "/_emulator/sns/cert.pem"
_LICENSE_ID = re.compile(r"(l-[0-9a-f]+)$")

# Request-level errors caused by the content of a record: isolate the record, send the rest.
RECORD_ERRORS = frozenset(
    {
        "InvalidCustomerIdentifierException",
        "TimestampOutOfBoundsException",
        "InvalidUsageDimensionException",
        "InvalidLicenseException",
        "InvalidTagException",
        "InvalidUsageAllocationsException",
        "ValidationException",
    }
)
TRANSIENT_ERRORS = frozenset(
    {
        "ThrottlingException",
        "InternalServiceErrorException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "TooManyRequestsException",
    }
)

_SNS_ACTIONS: dict[str, NotificationKind] = {
    "subscribe-success": NotificationKind.CREATED,
    "subscribe-fail": NotificationKind.IGNORED,  # payment may have failed: wait for success
    "unsubscribe-pending": NotificationKind.CANCELED,  # about one hour left for final records
    "unsubscribe-success": NotificationKind.CANCELED,  # final: nothing accepted any more
    "entitlement-updated": NotificationKind.MODIFIED,  # read GetEntitlements to learn what
}


def license_id(license_arn: str | None) -> str | None:
    """Return the trailing ``l-<hex>`` id of a license ARN (EventBridge may drop ``arn:``)."""
    match = _LICENSE_ID.search(license_arn or "")
    return match.group(1) if match else None


@dataclass(frozen=True)
class AwsEntitlement:
    """One row of GetEntitlements: a dimension's entitled value for one customer/license."""

    product_code: str
    dimension: str
    value: int | float | bool | str | None
    customer_identifier: str | None = None
    customer_aws_account_id: str | None = None
    license_arn: str | None = None
    expiration_date: datetime | None = None


# --- SNS signature verification --------------------------------------------------------------


def _fetch_url(url: str) -> bytes:
    answer = requests.get(url, timeout=10)
    answer.raise_for_status()
    return answer.content


class SnsVerifier:
    """Verify SNS envelope signatures against certificates fetched from trusted URLs.

    ``trusted_cert_url`` decides which ``SigningCertURL`` (and ``SubscribeURL``) may be used;
    ``fetch`` returns the PEM bytes of a URL (cached per URL); ``topic_arns`` (when not empty)
    lists the only topics accepted.
    """

    def __init__(
        self,
        *,
        trusted_url: Callable[[str], bool],
        fetch: Callable[[str], bytes] = _fetch_url,
        topic_arns: Sequence[str] = (),
    ):
        self._trusted_url = trusted_url
        self._fetch = fetch
        self.topic_arns = tuple(topic_arns)
        self._keys: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def live(cls, topic_arns: Sequence[str] = (), fetch: Callable[[str], bytes] = _fetch_url) -> "SnsVerifier":
        """Trust only ``https://sns.<region>.amazonaws.com[.cn]/...`` URLs."""
        return cls(trusted_url=is_sns_url, fetch=fetch, topic_arns=topic_arns)

    @classmethod
    def for_emulator(
        cls, emulator_url: str, topic_arns: Sequence[str] = (), fetch: Callable[[str], bytes] | None = None
    ) -> "SnsVerifier":
        """Trust only the emulator's own certificate (and SubscribeURL) on a loopback host."""
        base = emulator_url.rstrip("/")
        host = urlsplit(base).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
            raise ValueError(f"the emulator must be on a loopback host, not {host!r}")
        cert_url = base + CERT_PATH

        def trusted(url: str) -> bool:
            return url == cert_url or url.startswith(base + "/?")

        return cls(trusted_url=trusted, fetch=fetch or _fetch_url, topic_arns=topic_arns)

    def is_trusted_url(self, url: str) -> bool:
        """Tell whether ``url`` may be fetched (certificate) or called (SubscribeURL)."""
        return bool(url) and self._trusted_url(url)

    def verify(self, envelope: Mapping[str, Any]) -> None:
        """Raise ``UnverifiedNotification`` unless ``envelope`` is authentically signed by SNS."""
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        version = str(envelope.get("SignatureVersion", ""))
        if version not in ("1", "2"):
            raise UnverifiedNotification(f"unsupported SignatureVersion {version!r}")
        cert_url = str(envelope.get("SigningCertURL") or "")
        if not self.is_trusted_url(cert_url):
            raise UnverifiedNotification(f"untrusted SigningCertURL {cert_url!r}")
        try:
            signature = base64.b64decode(str(envelope.get("Signature") or ""), validate=True)
        except ValueError:
            raise UnverifiedNotification("Signature is not base64") from None
        with self._lock:
            public_key = self._keys.get(cert_url)
        if public_key is None:
            try:
                cert = x509.load_pem_x509_certificate(self._fetch(cert_url))
            except Exception as err:  # noqa: BLE001 - any fetch/parse failure means "cannot verify"
                raise UnverifiedNotification(f"cannot load signing certificate: {err}") from None
            public_key = cert.public_key()
            with self._lock:
                self._keys[cert_url] = public_key
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        try:
            public_key.verify(signature, string_to_sign(envelope), padding.PKCS1v15(), digest)
        except (InvalidSignature, TypeError, ValueError):
            raise UnverifiedNotification("SNS signature does not verify") from None
        topic = envelope.get("TopicArn")
        if self.topic_arns and topic not in self.topic_arns:
            raise UnverifiedNotification(f"unexpected TopicArn {topic!r}")


def is_sns_url(url: str) -> bool:
    """Tell whether ``url`` is HTTPS on an SNS host (``sns.<region>.amazonaws.com[.cn]``)."""
    parts = urlsplit(url)
    return parts.scheme == "https" and parts.port in (None, 443) and bool(
        SNS_HOST.match(parts.hostname or "")
    ) and not parts.username


def string_to_sign(envelope: Mapping[str, Any]) -> bytes:
    """Return the bytes SNS signs: ``name\\nvalue\\n`` for the type's fields in byte order."""
    if envelope.get("Type") == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    out = bytearray()
    for name in names:
        value = envelope.get(name)
        if value is None:
            continue  # Subject is signed only when the publisher set one
        out += f"{name}\n{value}\n".encode("utf-8")
    return bytes(out)


# --- the adapter ------------------------------------------------------------------------------


class AwsMarketplace:
    """The AWS Marketplace adapter (metering, entitlements, lifecycle notifications)."""

    marketplace = Marketplace.AWS

    def __init__(
        self,
        client: Any,
        *,
        product_code: str | None = None,
        entitlement_client: Any = None,
        sns_verifier: SnsVerifier | None = None,
        max_batch: int = MAX_BATCH,
        unprocessed_retries: int = 3,
        backoff_seconds: Sequence[float] = (0.2, 0.5, 1.0),
        sleep: Callable[[float], None] = time.sleep,
        http_get: Callable[[str], Any] | None = None,
        pace: Callable[[], None] | None = None,
    ):
        """``pace`` is called before every BatchMeterUsage call and may block: the caller's way
        to keep all its processes under the per-account rate limit (10 calls/s) rather than
        spend the calls on ``ThrottlingException`` and backoff."""
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be in 1..{MAX_BATCH}")
        self.client = client
        self.product_code = product_code
        self.entitlement_client = entitlement_client
        self.sns_verifier = sns_verifier or SnsVerifier.live()
        self.max_batch = max_batch
        self.unprocessed_retries = unprocessed_retries
        self.backoff_seconds = tuple(backoff_seconds) or (0.0,)
        self._sleep = sleep
        self._http_get = http_get
        self._pace = pace

    # -- metering --

    def report(self, records: Sequence[UsageRecord]) -> list[Outcome]:
        """Send ``records`` with BatchMeterUsage; return one ``Outcome`` per record, in order."""
        outcomes: dict[str, Outcome] = {}
        groups: dict[str, list[tuple[UsageRecord, dict[str, Any]]]] = {}
        for record in records:
            problem = self._local_problem(record)
            if problem:
                outcomes[record.key] = Outcome(record.key, OutcomeStatus.REJECTED, problem)
                continue
            product = record.identifiers.get("product_code") or self.product_code
            groups.setdefault(str(product), []).append((record, _wire_record(record)))
        try:
            for product, items in groups.items():
                for chunk in _chunks(items, self.max_batch):
                    self._meter(product, chunk, outcomes, attempt=0)
        except TransientMarketplaceError as err:
            sent = [r for r in records if r.key in outcomes]
            if not sent:
                raise
            # Part of the batch went through: keep those answers, the rest is safe to resend.
            for record in records:
                outcomes.setdefault(
                    record.key, Outcome(record.key, OutcomeStatus.FAILED, f"not sent: {err}")
                )
        return [
            outcomes.get(r.key) or Outcome(r.key, OutcomeStatus.FAILED, "no answer for this record")
            for r in records
        ]

    def _local_problem(self, record: UsageRecord) -> str:
        ids = record.identifiers
        if record.marketplace != Marketplace.AWS:
            return f"not an AWS record ({record.marketplace.value})"
        if not (ids.get("product_code") or self.product_code):
            return "missing product_code"
        if not (ids.get("customer_aws_account_id") or ids.get("customer_identifier")):
            return "missing customer_aws_account_id/license_arn or customer_identifier"
        if record.quantity > MAX_QUANTITY:
            return f"quantity {record.quantity} exceeds {MAX_QUANTITY}"
        return ""

    def _meter(
        self,
        product: str,
        items: list[tuple[UsageRecord, dict[str, Any]]],
        outcomes: dict[str, Outcome],
        attempt: int,
    ) -> None:
        if len(items) > 1 and len(json.dumps([w for _, w in items], default=str)) > MAX_REQUEST_BYTES // 2:
            half = len(items) // 2
            self._meter(product, items[:half], outcomes, attempt)
            self._meter(product, items[half:], outcomes, attempt)
            return
        if self._pace is not None:
            self._pace()
        try:
            response = self._call(
                self.client.batch_meter_usage,
                ProductCode=product,
                UsageRecords=[wire for _, wire in items],
            )
        except _RecordLevelError as err:
            if len(items) == 1:
                record = items[0][0]
                outcomes[record.key] = Outcome(
                    record.key, OutcomeStatus.REJECTED, f"{err.code}: {err.message}"
                )
                return
            # The whole call was refused for some record(s): split until they are isolated.
            half = len(items) // 2
            self._meter(product, items[:half], outcomes, attempt)
            self._meter(product, items[half:], outcomes, attempt)
            return
        pending = {_match_key(wire): [] for _, wire in items}
        for item in items:
            pending[_match_key(item[1])].append(item)
        for result in response.get("Results") or []:
            queue = pending.get(_match_key(result.get("UsageRecord") or {}))
            if not queue:
                continue
            record, _ = queue.pop(0)
            outcomes[record.key] = _outcome(record, result)
        unprocessed: list[tuple[UsageRecord, dict[str, Any]]] = []
        for wire in response.get("UnprocessedRecords") or []:
            queue = pending.get(_match_key(wire))
            if queue:
                unprocessed.append(queue.pop(0))
        for queue in pending.values():
            for record, _ in queue:
                outcomes[record.key] = Outcome(
                    record.key, OutcomeStatus.FAILED, "missing from the BatchMeterUsage response"
                )
        if not unprocessed:
            return
        if attempt >= self.unprocessed_retries:
            for record, _ in unprocessed:
                outcomes[record.key] = Outcome(
                    record.key,
                    OutcomeStatus.FAILED,
                    f"still unprocessed after {attempt + 1} attempts",
                )
            return
        self._sleep(self.backoff_seconds[min(attempt, len(self.backoff_seconds) - 1)])
        self._meter(product, unprocessed, outcomes, attempt + 1)

    def _call(self, method: Callable[..., Any], **params: Any) -> Any:
        """Call a boto3 method, translating its errors into ours."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError as BotoConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            return method(**params)
        except ClientError as err:
            error = err.response.get("Error") or {}
            code = str(error.get("Code") or "")
            message = str(error.get("Message") or "")
            status = int((err.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
            if code in RECORD_ERRORS:
                raise _RecordLevelError(code, message) from None
            if code in TRANSIENT_ERRORS or status >= 500 or status == 429:
                raise TransientMarketplaceError(f"{code or status}: {message}") from err
            raise PermanentMarketplaceError(f"{code or status}: {message}") from err
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise PermanentMarketplaceError(f"no usable AWS credentials: {err}") from err
        except (BotoConnectionError, HTTPClientError) as err:
            raise TransientMarketplaceError(f"connection to AWS failed: {err}") from err
        except BotoCoreError as err:
            raise PermanentMarketplaceError(f"AWS client error: {err}") from err

    # -- entitlements --

    def get_entitlements(
        self,
        product_code: str,
        customer_aws_account_id: str | None = None,
        license_arn: str | None = None,
        customer_identifier: str | None = None,
    ) -> list[AwsEntitlement]:
        """Return every entitlement of ``product_code`` matching the given customer filters."""
        if self.entitlement_client is None:
            raise PermanentMarketplaceError("no marketplace-entitlement client configured")
        filters: dict[str, list[str]] = {}
        if customer_aws_account_id:
            filters["CUSTOMER_AWS_ACCOUNT_ID"] = [customer_aws_account_id]
        if license_arn:
            filters["LICENSE_ARN"] = [license_arn]
        if customer_identifier:
            filters["CUSTOMER_IDENTIFIER"] = [customer_identifier]
        params: dict[str, Any] = {"ProductCode": product_code}
        if filters:
            params["Filter"] = filters
        out: list[AwsEntitlement] = []
        seen_tokens: set[str] = set()
        while True:
            try:
                page = self._call(self.entitlement_client.get_entitlements, **params)
            except _RecordLevelError as err:
                raise PermanentMarketplaceError(f"{err.code}: {err.message}") from None
            out.extend(_entitlement(row) for row in page.get("Entitlements") or [])
            token = page.get("NextToken")
            # A page may be empty and still carry a NextToken: keep going until none is left.
            if not token or token in seen_tokens:
                return out
            seen_tokens.add(token)
            params["NextToken"] = token

    # -- notifications --

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> ContractNotification:
        """Verify and normalize an SNS envelope, or parse an EventBridge event (no signature)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        document = _load_json(body)
        if "x-amz-sns-message-type" in lowered or "SignatureVersion" in document:
            return self._parse_sns(lowered, document)
        return parse_eventbridge(body)

    def _parse_sns(self, headers: Mapping[str, str], envelope: Mapping[str, Any]) -> ContractNotification:
        kind = envelope.get("Type")
        if kind not in ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation"):
            raise MalformedNotification(f"unknown SNS message type {kind!r}", field="Type")
        header_type = headers.get("x-amz-sns-message-type")
        if header_type and header_type != kind:
            raise MalformedNotification(
                f"header says {header_type!r} but the envelope is {kind!r}", field="Type"
            )
        for name in ("MessageId", "TopicArn", "Message", "Timestamp"):
            if not isinstance(envelope.get(name), str):
                raise MalformedNotification(f"SNS envelope lacks {name}", field=name)
        self.sns_verifier.verify(envelope)
        message_id = envelope["MessageId"]
        sent_at = _parse_time(envelope["Timestamp"], "Timestamp")
        base_extra = {"topic_arn": envelope["TopicArn"], "sns_type": kind}
        if kind == "SubscriptionConfirmation":
            return ContractNotification(
                marketplace=Marketplace.AWS,
                delivery_id=message_id,
                kind=NotificationKind.SUBSCRIPTION_CONFIRMATION,
                action=kind,
                effective_at=sent_at,
                extra={
                    **base_extra,
                    "subscribe_url": envelope.get("SubscribeURL"),
                    "token": envelope.get("Token"),
                    "envelope": dict(envelope),
                },
            )
        if kind == "UnsubscribeConfirmation":
            return ContractNotification(
                marketplace=Marketplace.AWS,
                delivery_id=message_id,
                kind=NotificationKind.IGNORED,
                action=kind,
                effective_at=sent_at,
                extra=base_extra,
            )
        try:
            message = json.loads(envelope["Message"])
        except ValueError:
            raise MalformedNotification("SNS Message is not JSON", field="Message") from None
        if not isinstance(message, dict):
            raise MalformedNotification("SNS Message is not a JSON object", field="Message")
        action = _first(message, "action", "Action")
        if not action:
            raise MalformedNotification("marketplace message lacks action", field="Message.action")
        identifiers = {
            name: value
            for name, value in (
                ("product_code", _first(message, "product-code", "ProductCode", "productCode")),
                ("customer_identifier", _first(message, "customer-identifier", "CustomerIdentifier", "customerIdentifier")),
                ("customer_aws_account_id", _first(message, "customer-aws-account-id", "CustomerAWSAccountId", "customerAWSAccountId")),
                ("license_arn", _first(message, "license-arn", "LicenseArn", "licenseArn")),
            )
            if value
        }
        if not (identifiers.get("customer_identifier") or identifiers.get("license_arn")):
            raise MalformedNotification(
                "marketplace message names no customer", field="Message.customer-identifier"
            )
        if identifiers.get("license_arn"):
            identifiers["license_id"] = license_id(identifiers["license_arn"]) or ""
        extra: dict[str, Any] = dict(base_extra)
        offer = _first(message, "offer-identifier", "OfferIdentifier", "offerIdentifier")
        if offer:
            extra["offer_identifier"] = offer
        trial = message.get("isFreeTrialTermPresent")
        if trial is not None:
            # AWS sends the string "true"/"false", not a JSON boolean.
            extra["free_trial"] = str(trial).strip().lower() == "true"
        if action == "unsubscribe-success":
            extra["final"] = True
        kind_out = _SNS_ACTIONS.get(action)
        if kind_out is None:
            kind_out = NotificationKind.IGNORED
            extra["unknown_action"] = True
        return ContractNotification(
            marketplace=Marketplace.AWS,
            delivery_id=message_id,
            kind=kind_out,
            action=action,
            identifiers=identifiers,
            effective_at=sent_at,
            extra=extra,
        )

    def confirm_subscription(self, notification: ContractNotification) -> None:
        """Confirm an SNS topic subscription by GETting its SubscribeURL (after re-verifying)."""
        if notification.kind != NotificationKind.SUBSCRIPTION_CONFIRMATION:
            raise ValueError("not a subscription confirmation")
        envelope = notification.extra.get("envelope") or {}
        # Verify again: the notification may have been stored and rebuilt since it arrived.
        self.sns_verifier.verify(envelope)
        url = str(envelope.get("SubscribeURL") or "")
        if not self.sns_verifier.is_trusted_url(url):
            raise UnverifiedNotification(f"untrusted SubscribeURL {url!r}")
        if self._http_get is not None:
            self._http_get(url)
            return
        try:
            answer = requests.get(url, timeout=10)
        except requests.RequestException as err:
            raise TransientMarketplaceError(f"cannot reach SubscribeURL: {err}") from err
        if answer.status_code >= 500:
            raise TransientMarketplaceError(f"SubscribeURL answered {answer.status_code}")
        if answer.status_code >= 400:
            raise PermanentMarketplaceError(f"SubscribeURL answered {answer.status_code}")


class _RecordLevelError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def parse_eventbridge(body: bytes) -> ContractNotification:
    """Normalize an ``aws.agreement-marketplace`` EventBridge event (authenticated by the caller)."""
    event = _load_json(body)
    for name in ("id", "detail-type", "source"):
        if not isinstance(event.get(name), str) or not event.get(name):
            raise MalformedNotification(f"EventBridge event lacks {name}", field=name)
    if event["source"] != EVENTBRIDGE_SOURCE:
        raise MalformedNotification(f"unexpected source {event['source']!r}", field="source")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise MalformedNotification("EventBridge event lacks detail", field="detail")
    detail_type = event["detail-type"]
    agreement = detail.get("agreement") or {}
    product = detail.get("product") or {}
    license_ = detail.get("license") or {}
    identifiers = {
        name: str(value)
        for name, value in (
            ("product_code", product.get("code")),
            ("customer_aws_account_id", (detail.get("acceptor") or {}).get("accountId")),
            ("license_arn", license_.get("arn")),
            ("license_id", license_id(license_.get("arn"))),
            ("agreement_id", agreement.get("id")),
        )
        if value
    }
    kind = _eventbridge_kind(detail_type)
    extra = {
        name: value
        for name, value in (
            ("detail_type", detail_type),
            ("product_id", product.get("id")),
            ("offer_id", (detail.get("offer") or {}).get("id")),
            ("proposer_account_id", (detail.get("proposer") or {}).get("accountId")),
            ("agreement_status", agreement.get("status")),
            ("agreement_intent", agreement.get("intent")),
            ("agreement_end_time", agreement.get("endTime")),
            ("resale_authorization_id", (detail.get("resaleAuthorization") or {}).get("id")),
            ("seller_account", event.get("account")),
        )
        if value
    }
    if kind == NotificationKind.CANCELED and detail_type.startswith("License Deprovisioned"):
        extra["final"] = True
    effective = _parse_time(event["time"], "time") if event.get("time") else None
    return ContractNotification(
        marketplace=Marketplace.AWS,
        delivery_id=event["id"],
        kind=kind,
        action=detail_type,
        identifiers=identifiers,
        effective_at=effective,
        extra=extra,
    )


def _eventbridge_kind(detail_type: str) -> NotificationKind:
    if detail_type.startswith("License Updated"):
        return NotificationKind.CREATED  # the worker converges an existing license
    if detail_type.startswith(("License Deprovisioned", "Purchase Agreement Ended")):
        return NotificationKind.CANCELED
    if detail_type.startswith("Purchase Agreement Amended"):
        return NotificationKind.MODIFIED
    return NotificationKind.IGNORED  # Agreement Created carries no license; others informational


# --- helpers ---------------------------------------------------------------------------------


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _wire_record(record: UsageRecord) -> dict[str, Any]:
    ids = record.identifiers
    wire: dict[str, Any] = {
        "Timestamp": record.hour,
        "Dimension": record.dimension,
        "Quantity": record.quantity,
    }
    if ids.get("customer_aws_account_id"):
        wire["CustomerAWSAccountId"] = ids["customer_aws_account_id"]
        if ids.get("license_arn"):
            wire["LicenseArn"] = ids["license_arn"]
    else:
        wire["CustomerIdentifier"] = ids["customer_identifier"]
    return wire


def _match_key(wire: Mapping[str, Any]) -> tuple[Any, ...]:
    stamp = wire.get("Timestamp")
    if isinstance(stamp, datetime):
        stamp = int(stamp.timestamp())
    elif isinstance(stamp, (int, float)):
        stamp = int(stamp)
    return (
        wire.get("CustomerIdentifier") or "",
        wire.get("CustomerAWSAccountId") or "",
        license_id(wire.get("LicenseArn")) or "",
        wire.get("Dimension"),
        stamp,
    )


def _outcome(record: UsageRecord, result: Mapping[str, Any]) -> Outcome:
    status = result.get("Status")
    record_id = result.get("MeteringRecordId")
    if status == "Success":
        return Outcome(record.key, OutcomeStatus.ACCEPTED, marketplace_record_id=record_id)
    if status == "DuplicateRecord":
        return Outcome(
            record.key,
            OutcomeStatus.DUPLICATE,
            "an earlier record for this customer, dimension and hour stands",
            marketplace_record_id=record_id,
        )
    if status == "CustomerNotSubscribed":
        return Outcome(
            record.key,
            OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED,
            "no active subscription for this customer/license",
        )
    return Outcome(record.key, OutcomeStatus.FAILED, f"unknown status {status!r}")


def _entitlement(row: Mapping[str, Any]) -> AwsEntitlement:
    value_box = row.get("Value") or {}
    value = None
    for name in ("IntegerValue", "DoubleValue", "BooleanValue", "StringValue"):
        if name in value_box:
            value = value_box[name]
            break
    expiration = row.get("ExpirationDate")
    if isinstance(expiration, datetime) and expiration.tzinfo is not None:
        expiration = expiration.astimezone(timezone.utc)
    return AwsEntitlement(
        product_code=row.get("ProductCode", ""),
        dimension=row.get("Dimension", ""),
        value=value,
        customer_identifier=row.get("CustomerIdentifier"),
        customer_aws_account_id=row.get("CustomerAWSAccountId"),
        license_arn=row.get("LicenseArn"),
        expiration_date=expiration,
    )


def _load_json(body: bytes | str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, TypeError):
        raise MalformedNotification("body is not JSON") from None
    if not isinstance(document, dict):
        raise MalformedNotification("body is not a JSON object")
    return document


def _first(mapping: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = mapping.get(name)
        if value not in (None, ""):
            return str(value)
    return None


def _parse_time(value: Any, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise MalformedNotification(f"{field} is not an ISO-8601 time", field=field) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+23:59 has no UTC value
        raise MalformedNotification(f"{field} is out of range", field=field) from None


# --- composition ------------------------------------------------------------------------------


def build_aws_adapter(settings: Any, **overrides: Any) -> AwsMarketplace:
    """Build the adapter from settings: emulator endpoints in sandbox mode, AWS in live mode.

    ``overrides`` may replace constructor arguments (``client``, ``entitlement_client``,
    ``sns_verifier``, ``product_code``, ...) and tune the clients: ``max_attempts`` (botocore
    attempts per call including the first, default 3), ``connect_timeout``/``read_timeout`` (seconds) and, in
    sandbox mode, ``aws_access_key_id``/``aws_secret_access_key``.
    """
    import boto3
    from botocore.config import Config

    max_attempts = int(overrides.pop("max_attempts", 3))
    config = Config(
        # botocore retries throttling and 5xx itself first; what is left becomes transient.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=float(overrides.pop("connect_timeout", 5)),
        read_timeout=float(overrides.pop("read_timeout", 20)),
    )
    access_key = overrides.pop("aws_access_key_id", "sandbox")
    secret_key = overrides.pop("aws_secret_access_key", "sandbox")
    sandbox = settings.MARKETPLACE_MODE == "sandbox"
    if sandbox:
        endpoint = settings.emulator_url("aws")
        common = {
            "endpoint_url": endpoint,
            "region_name": settings.AWS_REGION,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
            "config": config,
        }
        metering = dict(common)
        entitlement = dict(common)
    else:
        metering = {"region_name": settings.AWS_REGION, "config": config}
        # The Entitlement Service exists only in us-east-1.
        entitlement = {"region_name": "us-east-1", "config": config}
    if "client" not in overrides:
        overrides["client"] = boto3.client("meteringmarketplace", **metering)
    if "entitlement_client" not in overrides:
        overrides["entitlement_client"] = boto3.client("marketplace-entitlement", **entitlement)
    if "sns_verifier" not in overrides:
        topics = tuple(settings.AWS_SNS_TOPIC_ARNS)
        overrides["sns_verifier"] = (
            SnsVerifier.for_emulator(settings.emulator_url("aws"), topic_arns=topics)
            if sandbox
            else SnsVerifier.live(topic_arns=topics)
        )
    client = overrides.pop("client")
    return AwsMarketplace(client, **overrides)


__all__ = [
    "AwsEntitlement",
    "AwsMarketplace",
    "SnsVerifier",
    "build_aws_adapter",
    "is_sns_url",
    "license_id",
    "parse_eventbridge",
    "string_to_sign",
]


def _aws_record_identifiers(columns: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, str]:
    # Current listings meter by account + license; legacy ones by the customer identifier.
    identifiers = {"product_code": columns.get("product_code") or ids.get("product_code", "")}
    if columns.get("license_arn") and columns.get("customer_aws_account_id"):
        identifiers.update(customer_aws_account_id=columns["customer_aws_account_id"],
                           license_arn=columns["license_arn"])
    else:
        identifiers["customer_identifier"] = columns.get("customer_identifier") or ids.get("customer_identifier", "")
    return identifiers


RULES = MarketplaceRules(
    marketplace=Marketplace.AWS,
    batch_size=25,  # BatchMeterUsage takes at most 25 records
    final_usage_window=timedelta(hours=1),  # usage is accepted for one hour after the license ends
    hourly_zero_record=True,  # AWS asks for a record every hour, zero included
    flush_lookback_hours=0,
    contract_key_fields=("license_arn", "customer_identifier"),
    product_fields=("product_code", "product_id"),
    record_identifiers=_aws_record_identifiers,
    customer_identity=lambda ids: ids.get("customer_aws_account_id") or ids.get("customer_identifier"),
)
