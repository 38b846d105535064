"""AWS lifecycle feeds (docs/marketplaces.md §2.7-§2.9): SNS HTTP envelopes verified against the signing
certificate (SignatureVersion 1 or 2, a certificate URL on an SNS host; in sandbox mode only the
emulator's), and EventBridge events, which carry no signature: the receiver authenticates them
(shared-secret header) before calling ``parse_eventbridge``."""

from __future__ import annotations

import base64
import json
import re
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import requests

from marketplaces.base import (
    ContractNotification,
    MalformedNotification,
    Marketplace,
    NotificationKind,
    PermanentMarketplaceError,
    TransientMarketplaceError,
    UnverifiedNotification,
)
from marketplaces.aws.wire import (
    first as _first,
    license_id,
    load_json as _load_json,
    parse_time as _parse_time,
)


EVENTBRIDGE_SOURCE = "aws.agreement-marketplace"
SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
CERT_PATH = "/_emulator/sns/cert.pem"


_SNS_ACTIONS: dict[str, NotificationKind] = {
    "subscribe-success": NotificationKind.CREATED,
    "subscribe-fail": NotificationKind.IGNORED,  # payment may have failed: wait for success
    "unsubscribe-pending": NotificationKind.CANCELED,  # about one hour left for final records
    "unsubscribe-success": NotificationKind.CANCELED,  # final: nothing accepted any more
    "entitlement-updated": NotificationKind.MODIFIED,  # read GetEntitlements to learn what
}


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


class Notifications:
    """The notification part of ``AwsMarketplace``: SNS and EventBridge, verified by ``self.sns_verifier``."""

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


# EventBridge event ids and the identifiers taken from an event are stored (the inbox keys on the
# id): bounded, so a body cannot grow a column past its size.
_MAX_ID = 255
_EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LATEST = datetime(2200, 1, 1, tzinfo=timezone.utc)


def _text(mapping: Mapping[str, Any], name: str, field: str, *, required: bool) -> str | None:
    """Return ``mapping[name]`` as a non-empty string of at most ``_MAX_ID`` characters, or None if absent."""
    value = mapping.get(name)
    if value is None or value == "":
        if required:
            raise MalformedNotification(f"EventBridge event lacks {field}", field=field)
        return None
    if not isinstance(value, str):
        raise MalformedNotification(f"{field} must be a string", field=field)
    if len(value) > _MAX_ID:
        raise MalformedNotification(f"{field} is longer than {_MAX_ID} characters", field=field)
    return value


def _object(mapping: Mapping[str, Any], name: str, field: str, *, required: bool = False) -> Mapping[str, Any]:
    """Return ``mapping[name]`` when it is a JSON object ({} when absent and not required)."""
    value = mapping.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise MalformedNotification(f"{field} must be a JSON object", field=field)
    return value


def parse_eventbridge(body: bytes) -> ContractNotification:
    """Normalize an ``aws.agreement-marketplace`` EventBridge event (authenticated by the caller).

    The envelope's ``id`` (the delivery id), ``detail-type``, ``source`` and ``time`` (the instant of
    the change, e.g. the deprovisioning) are required; a license event must name its license
    (``detail.license.arn``, ending in its ``l-<hex>`` id) and product (``detail.product.code``), an
    agreement event its agreement (``detail.agreement.id``). Anything else wrong raises
    ``MalformedNotification`` naming the field; an unknown ``detail-type`` of this source is
    ``ignored`` (stored, nothing applied).
    """
    event = _load_json(body)
    for name in ("id", "detail-type", "source", "time"):
        _text(event, name, name, required=True)
    if event["source"] != EVENTBRIDGE_SOURCE:
        raise MalformedNotification(f"unexpected source {event['source']!r}", field="source")
    effective = _parse_time(event["time"], "time")
    if not _EARLIEST <= effective < _LATEST:
        raise MalformedNotification(f"time: {event['time']} is out of range (instants are between "
                                    "1970-01-01T00:00:00Z and 2200-01-01T00:00:00Z)", field="time")
    detail = _object(event, "detail", "detail", required=True)
    detail_type = event["detail-type"]
    kind = _eventbridge_kind(detail_type)
    licensed = detail_type.startswith("License ") and kind != NotificationKind.IGNORED
    agreement = _object(detail, "agreement", "detail.agreement")
    product = _object(detail, "product", "detail.product")
    license_ = _object(detail, "license", "detail.license")
    acceptor = _object(detail, "acceptor", "detail.acceptor")
    arn = _text(license_, "arn", "detail.license.arn", required=licensed)
    if arn is not None and license_id(arn) is None:
        raise MalformedNotification("detail.license.arn does not end in a license id (l-<hex>)",
                                    field="detail.license.arn")
    required_agreement = detail_type.startswith("Purchase Agreement") and kind != NotificationKind.IGNORED
    identifiers = {
        name: value
        for name, value in (
            ("product_code", _text(product, "code", "detail.product.code", required=licensed)),
            ("customer_aws_account_id", _text(acceptor, "accountId", "detail.acceptor.accountId", required=False)),
            ("license_arn", arn),
            ("license_id", license_id(arn)),
            ("agreement_id", _text(agreement, "id", "detail.agreement.id", required=required_agreement)),
        )
        if value
    }
    extra = {
        name: value
        for name, value in (
            ("detail_type", detail_type),
            ("product_id", product.get("id")),
            ("offer_id", _object(detail, "offer", "detail.offer").get("id")),
            ("proposer_account_id", _object(detail, "proposer", "detail.proposer").get("accountId")),
            ("agreement_status", agreement.get("status")),
            ("agreement_intent", agreement.get("intent")),
            ("agreement_end_time", agreement.get("endTime")),
            ("resale_authorization_id",
             _object(detail, "resaleAuthorization", "detail.resaleAuthorization").get("id")),
            ("seller_account", event.get("account")),
        )
        if isinstance(value, str) and value
    }
    if kind == NotificationKind.CANCELED and detail_type.startswith("License Deprovisioned"):
        extra["final"] = True
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
