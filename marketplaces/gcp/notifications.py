"""Pub/Sub push notifications: the OIDC bearer token verified, the procurement event normalized."""
from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from marketplaces.base import (
    ContractNotification,
    Marketplace,
    MalformedNotification,
    NotificationKind,
    UnverifiedNotification,
)


GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
SANDBOX_PUSH_SERVICE_ACCOUNT = "marketplace-push@marketsync-sandbox.iam.gserviceaccount.com"


EMULATOR_CERTS_PATH = "/_emulator/oauth2/v1/certs"


# eventType -> (kind, approval needed). Anything not listed is understood but ignored: the
# worker GETs the entitlement or account and acts on its current state (docs/marketplaces.md §4.6).
_EVENT_KINDS: dict[str, NotificationKind] = {
    "ENTITLEMENT_ACTIVE": NotificationKind.CREATED,
    "ENTITLEMENT_OFFER_ACCEPTED": NotificationKind.CREATED,
    "ENTITLEMENT_CREATION_REQUESTED": NotificationKind.PENDING,
    "ENTITLEMENT_PLAN_CHANGE_REQUESTED": NotificationKind.PENDING,
    "ENTITLEMENT_PLAN_CHANGED": NotificationKind.MODIFIED,
    "ENTITLEMENT_CANCELLING": NotificationKind.CANCELED,
    "ENTITLEMENT_CANCELLED": NotificationKind.CANCELED,
    "ENTITLEMENT_RENEWED": NotificationKind.RENEWED,
    "ENTITLEMENT_SUSPENDED": NotificationKind.SUSPENDED,
}


_APPROVALS = {
    "ENTITLEMENT_CREATION_REQUESTED": "entitlement",
    "ENTITLEMENT_PLAN_CHANGE_REQUESTED": "plan_change",
}


# Push-token verification ------------------------------------------------------------------


@dataclass
class PushTokenVerifier:
    """Verify the OIDC bearer token of a Pub/Sub push and return its claims.

    With ``certs_url`` unset the token is checked against Google's published keys
    (``verify_oauth2_token``); with it set (sandbox) the PEM certificates by key id are
    fetched from that URL, cached, and fetched again once when a token names an unknown key.
    """

    audience: str
    service_account: str
    certs_url: str | None = None
    http: Any = None  # a requests.Session-like object for the certs URL
    clock_skew_seconds: int = 10
    refetch_interval_seconds: float = 30.0
    _fetched_at: float = field(default=float("-inf"), repr=False)
    _certs: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, authorization: str | None) -> Mapping[str, Any]:
        """Return the verified claims of ``Authorization: Bearer <token>``."""
        if not self.audience:
            raise UnverifiedNotification("no push audience is configured (GCP_PUSH_AUDIENCE)")
        if not self.service_account:
            raise UnverifiedNotification(
                "no push service account is configured (GCP_PUSH_SERVICE_ACCOUNT)"
            )
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnverifiedNotification("missing bearer token")
        claims = self._decode(token.strip())
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise UnverifiedNotification(f"unexpected token issuer {claims.get('iss')!r}")
        if claims.get("email") != self.service_account:
            raise UnverifiedNotification(f"token email {claims.get('email')!r} is not the push account")
        if claims.get("email_verified") is not True:
            raise UnverifiedNotification("token email is not verified")
        return claims

    def _decode(self, token: str) -> Mapping[str, Any]:
        from google.auth import exceptions as auth_exceptions

        try:
            if self.certs_url is None:
                import google.auth.transport.requests
                from google.oauth2 import id_token

                request = google.auth.transport.requests.Request(session=self.http)
                return id_token.verify_oauth2_token(
                    token, request, audience=self.audience,
                    clock_skew_in_seconds=self.clock_skew_seconds,
                )
            return self._decode_with_certs(token)
        except UnverifiedNotification:
            raise
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise UnverifiedNotification(f"push token rejected: {exc}") from None

    def _decode_with_certs(self, token: str) -> Mapping[str, Any]:
        import jwt as pyjwt
        from google.auth import jwt

        try:
            kid = pyjwt.get_unverified_header(token).get("kid")
        except pyjwt.PyJWTError:
            raise UnverifiedNotification("push token is not a JWT") from None
        with self._lock:
            certs = dict(self._certs)
            # Refetch for an unknown key id (rotation), but not on every forged token.
            stale = time.monotonic() - self._fetched_at > self.refetch_interval_seconds
        if not certs or (kid and kid not in certs and stale):
            certs = self._fetch_certs()
        return jwt.decode(
            token, certs=certs, audience=self.audience,
            clock_skew_in_seconds=self.clock_skew_seconds,
        )

    def _fetch_certs(self) -> dict[str, str]:
        import requests

        http = self.http or requests.Session()
        try:
            response = http.get(self.certs_url, timeout=10)
            response.raise_for_status()
            certs = {str(k): str(v) for k, v in response.json().items()}
        except (requests.RequestException, ValueError, AttributeError) as exc:
            # Cannot check the signature now; Pub/Sub redelivers what we do not ack.
            raise UnverifiedNotification(f"cannot fetch signing certificates: {exc}") from None
        with self._lock:
            self._certs = certs
            self._fetched_at = time.monotonic()
        return certs


class Notifications:
    """The push part of ``GcpMarketplace`` (needs ``push_verifier``, ``provider_id``)."""

    def parse_notification(self, headers: Mapping[str, str], body: bytes) -> ContractNotification:
        """Verify a Pub/Sub push (OIDC bearer token) and normalize the procurement event."""
        if self.push_verifier is None:
            raise UnverifiedNotification("no push verifier is configured")
        authorization = _header(headers, "authorization")
        claims = self.push_verifier(authorization)
        return parse_push_envelope(body, provider_id=self.provider_id, claims=claims)


def parse_push_envelope(
    body: bytes, *, provider_id: str | None = None, claims: Mapping[str, Any] | None = None
) -> ContractNotification:
    """Normalize an already-verified Pub/Sub push body into a ``ContractNotification``."""
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedNotification("push body is not JSON", field="body") from None
    if not isinstance(envelope, dict):
        raise MalformedNotification("push body is not a JSON object", field="body")
    message = envelope.get("message")
    if not isinstance(message, dict):
        raise MalformedNotification("push envelope has no message object", field="message")
    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise MalformedNotification("push message has no data", field="message.data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedNotification("message.data is not valid base64", field="message.data") from None
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedNotification("message.data is not JSON", field="message.data") from None
    if not isinstance(event, dict):
        raise MalformedNotification("message.data is not a JSON object", field="message.data")
    event_type = event.get("eventType")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedNotification("event has no eventType", field="eventType")
    event_provider = event.get("providerId")
    if provider_id and event_provider and event_provider != provider_id:
        raise MalformedNotification(
            f"event is for provider {event_provider!r}, not {provider_id!r}", field="providerId"
        )

    message_id = message.get("messageId") or message.get("message_id")
    delivery_id = event.get("eventId") or message_id
    if not delivery_id:
        raise MalformedNotification("event has neither eventId nor messageId", field="eventId")

    identifiers: dict[str, str] = {}
    if event_provider or provider_id:
        identifiers["provider_id"] = str(event_provider or provider_id)
    subject: dict[str, Any]
    if isinstance(event.get("entitlement"), dict):
        subject = event["entitlement"]
        id_field, id_name = "entitlement.id", "entitlement_id"
    elif isinstance(event.get("account"), dict):
        subject = event["account"]
        id_field, id_name = "account.id", "account_id"
    else:
        raise MalformedNotification("event has neither entitlement nor account", field="entitlement")
    if not isinstance(subject.get("id"), str) or not subject["id"]:
        raise MalformedNotification(f"event has no {id_field}", field=id_field)
    identifiers[id_name] = subject["id"]

    kind = _EVENT_KINDS.get(event_type, NotificationKind.IGNORED)
    if id_name == "account_id":
        kind = NotificationKind.IGNORED  # accounts: the worker GETs the account and links it
    new_plan = subject.get("newPlan") or subject.get("newPendingPlan")
    extra: dict[str, Any] = {"event_type": event_type}
    if event_type in _APPROVALS:
        extra["approval"] = _APPROVALS[event_type]
    if new_plan:
        extra["new_plan"] = new_plan
    for source, target in (
        ("newOfferDuration", "new_offer_duration"),
        ("newPendingOfferDuration", "new_offer_duration"),
    ):
        if subject.get(source):
            extra[target] = subject[source]
    if message_id:
        extra["message_id"] = str(message_id)
    publish_time = message.get("publishTime") or message.get("publish_time")
    if publish_time:
        extra["publish_time"] = publish_time
    if envelope.get("subscription"):
        extra["subscription"] = envelope["subscription"]
    if claims and claims.get("email"):
        extra["pushed_by"] = claims["email"]

    return ContractNotification(
        marketplace=Marketplace.GCP,
        delivery_id=str(delivery_id),
        kind=kind,
        action=event_type,
        identifiers=identifiers,
        plan=new_plan if kind is NotificationKind.MODIFIED else None,
        effective_at=parse_rfc3339(subject.get("updateTime")) or parse_rfc3339(publish_time),
        extra=extra,
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def parse_rfc3339(value: Any) -> datetime | None:
    """Parse an RFC 3339 instant as Google writes it (up to nanoseconds); None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Google writes up to nanoseconds; Python parses up to microseconds.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+23:59 has no UTC value
        return None
