"""Standard Webhooks signatures: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

The signed content is ``"{id}.{timestamp}.{body}"``; the signature is the base64 HMAC-SHA256 of
it under the secret's key (the base64 part of ``whsec_<base64>``). ``webhook-signature`` is a
space-separated list of ``v1,<base64>`` entries (several during a sender's key rotation). The
receiver accepts any of its configured secrets (our own rotation) and timestamps within the
tolerance in either direction (replay protection).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Mapping, Sequence


class WebhookVerificationError(Exception):
    """The delivery is not signed by a configured secret (answer 401, store nothing)."""


@dataclass(frozen=True)
class VerifiedDelivery:
    """A delivery whose signature and timestamp checked out."""

    delivery_id: str
    timestamp: int


def secret_key(secret: str) -> bytes:
    """Return the HMAC key of a ``whsec_`` secret."""
    encoded = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        # A secret that is not base64 is used as raw bytes, like most senders do.
        return encoded.encode()


def sign(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` value (``v1,<base64>``) for a delivery."""
    content = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return the three headers a sender attaches (used by tests, the demo and the emulators)."""
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, delivery_id, timestamp, body),
    }


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *, now: int,
           tolerance: int = 300) -> VerifiedDelivery:
    """Verify a delivery against ``secrets``; raise ``WebhookVerificationError`` saying why not."""
    if not secrets:
        raise WebhookVerificationError("no webhook secret is configured (WEBHOOK_SECRETS)")
    lowered = {k.lower(): v for k, v in headers.items()}
    delivery_id = lowered.get("webhook-id", "").strip()
    raw_timestamp = lowered.get("webhook-timestamp", "").strip()
    raw_signature = lowered.get("webhook-signature", "").strip()
    missing = [name for name, value in (("webhook-id", delivery_id), ("webhook-timestamp", raw_timestamp),
                                         ("webhook-signature", raw_signature)) if not value]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    if len(delivery_id) > 255:
        raise WebhookVerificationError("webhook-id is longer than 255 characters")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    if abs(now - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is outside the {tolerance}s tolerance (replayed or clock skew)"
        )
    offered = []
    for entry in raw_signature.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and value:
            offered.append(value)
    if not offered:
        raise WebhookVerificationError("webhook-signature has no v1 signature")
    for secret in secrets:
        expected = sign(secret, delivery_id, timestamp, body).partition(",")[2]
        if any(hmac.compare_digest(expected.encode(), candidate.encode()) for candidate in offered):
            return VerifiedDelivery(delivery_id=delivery_id, timestamp=timestamp)
    raise WebhookVerificationError("no signature matches a configured secret")
