"""AWS lifecycle feeds (docs/marketplaces.md §2.7-§2.9): SNS HTTP envelopes verified against the signing
certificate (SignatureVersion 1 or 2, a certificate URL on an SNS host; in sandbox mode only the
emulator's), and EventBridge events, which carry no signature: the receiver authenticates them
(shared-secret header) before calling ``parse_eventbridge``."""

from __future__ import annotations

import base64
import json
import re
import threading
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
