"""Azure commercial marketplace (SaaS): metering, SaaS Fulfillment v2 and the fulfillment webhook.

``AzureMarketplace`` talks to the Marketplace APIs with an injected ``requests.Session`` and an
injected credential (anything with azure-identity's ``get_token(scope) -> AccessToken`` shape).
``build_azure_adapter(settings)`` is the composition root: in live mode it uses
``ClientSecretCredential`` against Microsoft Entra and ``marketplaceapi.microsoft.com``; in
sandbox mode it points the same code at the built-in emulator, which issues its own tokens and
signs its own webhooks.

Error handling (see ``marketplaces.base`` for the tree):

- 401/403 -> ``PermanentMarketplaceError`` (wrong tenant/app for the offer, bad secret);
- 429, 5xx, timeouts, connection errors -> a short bounded retry, then
  ``TransientMarketplaceError``;
- per-event metering results are ``Outcome`` values, never exceptions.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import quote

import jwt
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from marketplaces.base import (
    MarketplaceRules,
    ContractNotification,
    Marketplace,
    MalformedNotification,
    NotificationKind,
    Outcome,
    OutcomeStatus,
    PermanentMarketplaceError,
    TransientMarketplaceError,
    UnverifiedNotification,
    UsageRecord,
)

log = logging.getLogger(__name__)

# The Marketplace API's fixed Entra application id (same for every publisher).
MARKETPLACE_APP_ID = "20e940b3-4c77-4b0b-9a53-9e16a1b010a7"
MARKETPLACE_SCOPE = f"{MARKETPLACE_APP_ID}/.default"
API_VERSION = "2018-08-31"
LIVE_BASE_URL = "https://marketplaceapi.microsoft.com/api"
LIVE_AUTHORITY = "https://login.microsoftonline.com"
BATCH_LIMIT = 25  # Azure rejects a batch of more than 25 events with HTTP 400

# What the emulator is configured with unless settings say otherwise.
SANDBOX_TENANT_ID = "marketsync-sandbox-tenant"
SANDBOX_CLIENT_ID = "marketsync-sandbox-app"
SANDBOX_CLIENT_SECRET = "marketsync-sandbox-secret"

ZERO_QUANTITY_DETAIL = "zero quantity: nothing to report"

_TOKEN_REFRESH_MARGIN = 300  # seconds before expires_on at which a cached token is renewed
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

_REJECTED_STATUSES = frozenset(
    {"Expired", "InvalidDimension", "InvalidQuantity", "BadArgument", "Error"}
)
_NOT_SUBSCRIBED_STATUSES = frozenset(
    {"ResourceNotFound", "ResourceNotActive", "ResourceNotAuthorized"}
)

_ACTION_KINDS = {
    "subscribe": NotificationKind.CREATED,
    "changeplan": NotificationKind.MODIFIED,
    "changequantity": NotificationKind.MODIFIED,
    "renew": NotificationKind.RENEWED,
    "suspend": NotificationKind.SUSPENDED,
    "reinstate": NotificationKind.REINSTATED,
    "unsubscribe": NotificationKind.CANCELED,
}
_ACK_ACTIONS = frozenset({"changeplan", "changequantity"})  # PATCH the operation within 10 s


class OperationSuperseded(PermanentMarketplaceError):
    """A newer update already fulfilled this operation (HTTP 409): re-read, do not retry."""


# Credentials -------------------------------------------------------------------------------


class SandboxCredential:
    """Obtain client-credentials tokens from an Entra-compatible token endpoint over HTTP.

    Same ``get_token(*scopes)`` shape as azure-identity's credentials; used in sandbox mode
    against the emulator's ``/{tenant}/oauth2/v2.0/token`` (azure-identity insists on HTTPS
    authorities, which a loopback emulator does not have).
    """

    def __init__(
        self,
        authority: str,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        *,
        session: requests.Session | None = None,
        timeout: float = 10.0,
    ):
        self.token_url = f"{authority.rstrip('/')}/{quote(tenant_id)}/oauth2/v2.0/token"
        self.client_id = client_id
        self._client_secret = client_secret
        self._session = session or requests.Session()
        self._timeout = timeout

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        """Request a token for ``scopes`` with the client-credentials grant."""
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "scope": " ".join(scopes),
        }
        response = self._session.post(self.token_url, data=form, timeout=self._timeout)
        if response.status_code != 200:
            raise ClientAuthenticationError(
                message=f"token endpoint answered {response.status_code}: {response.text[:200]}"
            )
        body = response.json()
        return AccessToken(body["access_token"], int(time.time()) + int(body["expires_in"]))


# Webhook verification ----------------------------------------------------------------------


class WebhookVerifier:
    """Verify the Entra JWT on a SaaS fulfillment webhook (RS256 against the tenant's JWKS).

    Checks the signature, ``exp``/``nbf``, ``aud`` (the publisher's app id), ``tid``, the
    issuer (v1 ``sts.windows.net`` or v2 ``login.microsoftonline.com`` form for the tenant)
    and that ``appid`` (v1) or ``azp`` (v2) is the Marketplace API's app id. The JWKS is found
    through the authority's openid-configuration, cached, and refetched on an unknown key id
    at most once per ``refetch_interval`` seconds.
    """

    def __init__(
        self,
        *,
        authority: str,
        tenant_id: str,
        audience: str,
        session: requests.Session | None = None,
        leeway: float = 60.0,
        refetch_interval: float = 60.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.authority = authority.rstrip("/")
        self.tenant_id = tenant_id
        self.audience = audience
        self.issuers = frozenset(
            {
                f"https://sts.windows.net/{tenant_id}/",
                f"https://login.microsoftonline.com/{tenant_id}/v2.0",
            }
        )
        self._session = session or requests.Session()
        self._leeway = leeway
        self._refetch_interval = refetch_interval
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None

    @property
    def openid_configuration_url(self) -> str:
        return f"{self.authority}/{quote(self.tenant_id)}/v2.0/.well-known/openid-configuration"

    def verify(self, token: str) -> dict[str, Any]:
        """Return the token's claims, or raise ``UnverifiedNotification``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise UnverifiedNotification(f"not a JWT: {exc}") from None
        if header.get("alg") != "RS256":
            raise UnverifiedNotification(f"unexpected JWT algorithm {header.get('alg')!r}")
        key = self._key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=self.audience,
                leeway=self._leeway,
                options={"require": ["exp", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise UnverifiedNotification(f"JWT rejected: {exc}") from None
        if claims.get("tid") != self.tenant_id:
            raise UnverifiedNotification("JWT is for another tenant")
        if claims.get("iss") not in self.issuers:
            raise UnverifiedNotification("JWT issuer is not this tenant's Entra issuer")
        if MARKETPLACE_APP_ID not in (claims.get("appid"), claims.get("azp")):
            raise UnverifiedNotification("JWT was not issued to the Marketplace API app")
        return claims

    def _key(self, kid: str | None) -> jwt.PyJWK:
        if not kid:
            raise UnverifiedNotification("JWT header has no kid")
        with self._lock:
            if kid not in self._keys and self._may_refetch():
                self._fetch_keys()
            key = self._keys.get(kid)
        if key is None:
            raise UnverifiedNotification("JWT signed by an unknown key")
        return key

    def _may_refetch(self) -> bool:
        return (
            self._fetched_at is None
            or self._clock() - self._fetched_at >= self._refetch_interval
        )

    def _fetch_keys(self) -> None:
        # Bound the refetch rate even when discovery fails: a flood of forged kids must not
        # turn into a flood of requests to the identity provider.
        self._fetched_at = self._clock()
        try:
            config = self._get_json(self.openid_configuration_url)
            jwks = self._get_json(config["jwks_uri"])
            keys = jwt.PyJWKSet.from_dict(jwks).keys
        except (requests.RequestException, ValueError, KeyError, jwt.PyJWTError) as exc:
            log.warning("azure jwks fetch failed: %s", exc)
            raise UnverifiedNotification("could not fetch the signing keys") from None
        self._keys = {k.key_id: k for k in keys if k.key_id}

    def _get_json(self, url: str) -> dict[str, Any]:
        response = self._session.get(url, timeout=self._timeout)
        response.raise_for_status()
        return response.json()


# The adapter -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    """One record as it goes on the wire, with its position in the caller's list."""

    index: int
    body: dict[str, Any]

    @property
    def match_key(self) -> tuple[str, str, str]:
        return (self.body["resourceId"], self.body["dimension"], self.body["effectiveStartTime"])


class AzureMarketplace:
    """The Azure SaaS adapter: metering, SaaS Fulfillment v2 calls and webhook parsing."""

    marketplace = Marketplace.AZURE

    def __init__(
        self,
        session: requests.Session,
        credential: Any,
        *,
        base_url: str = LIVE_BASE_URL,
        webhook_verifier: WebhookVerifier | None = None,
        timeout: float = 10.0,
        retry_delays: Sequence[float] = (0.5, 2.0),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        self._session = session
        self.credential = credential
        self.base_url = base_url.rstrip("/")
        self.webhook_verifier = webhook_verifier
        self._timeout = timeout
        self._retry_delays = tuple(retry_delays)
        self._sleep = sleep
        self._clock = clock
        self._token_lock = threading.Lock()
        self._token: AccessToken | None = None

    # Metering ------------------------------------------------------------------------------

    def report(self, records: Sequence[UsageRecord]) -> list[Outcome]:
        """Send ``records`` as batch usage events; return one ``Outcome`` per record, in order.

        A zero-quantity record is never sent (Azure rejects quantity 0 with InvalidQuantity
        and expects no event for an hour without usage); it comes back ``ACCEPTED`` with no
        marketplace record id and the detail ``"zero quantity: nothing to report"``, so the
        ledger can close that hour. Records without ``resource_id``/``plan_id`` are
        ``REJECTED`` without a call. A batch the API refuses as a whole (HTTP 400) is split in
        halves until the offending event is isolated and rejected alone. If a later batch
        fails transiently after earlier ones went through, its records come back ``FAILED``
        (safe to resend: Azure dedupes per resource/dimension/hour); if nothing was sent,
        ``TransientMarketplaceError`` propagates.
        """
        outcomes: list[Outcome | None] = [None] * len(records)
        events: list[_Event] = []
        for index, record in enumerate(records):
            if record.quantity == 0:
                outcomes[index] = Outcome(record.key, OutcomeStatus.ACCEPTED, ZERO_QUANTITY_DETAIL)
                continue
            missing = [n for n in ("resource_id", "plan_id") if not record.identifiers.get(n)]
            if missing:
                outcomes[index] = Outcome(
                    record.key, OutcomeStatus.REJECTED, f"missing identifiers: {', '.join(missing)}"
                )
                continue
            events.append(_Event(index, _event_body(record)))

        sent_any = False
        for start in range(0, len(events), BATCH_LIMIT):
            chunk = events[start : start + BATCH_LIMIT]
            try:
                results = self._send_batch(chunk)
            except TransientMarketplaceError as exc:
                if not sent_any:
                    raise
                for event in chunk:
                    key = records[event.index].key
                    outcomes[event.index] = Outcome(key, OutcomeStatus.FAILED, str(exc))
                continue
            sent_any = True
            for event, result in results:
                outcomes[event.index] = _outcome(records[event.index].key, result)
        return [o for o in outcomes if o is not None]

    def _send_batch(self, chunk: list[_Event]) -> list[tuple[_Event, dict[str, Any]]]:
        """POST one batch; return (event, result) pairs, splitting on a whole-batch 400."""
        response = self._call(
            "POST", "/batchUsageEvent", json_body={"request": [e.body for e in chunk]}
        )
        if response.status_code == 400:
            message = _error_message(response)
            if len(chunk) == 1:
                return [(chunk[0], {"status": "BadArgument", "message": message})]
            middle = len(chunk) // 2
            return self._send_batch(chunk[:middle]) + self._send_batch(chunk[middle:])
        self._raise_for_status(response)
        results = response.json().get("result") or []
        return _pair_results(chunk, results)

    # SaaS Fulfillment v2 -------------------------------------------------------------------

    def resolve(self, marketplace_token: str) -> dict[str, Any]:
        """Resolve a landing-page token to ``{id, subscriptionName, offerId, planId, ...}``."""
        response = self._call(
            "POST",
            "/saas/subscriptions/resolve",
            headers={"x-ms-marketplace-token": marketplace_token},
        )
        self._raise_for_status(response)
        return response.json()

    def activate(
        self, subscription_id: str, plan_id: str, quantity: int | None = None
    ) -> None:
        """Activate a subscription on ``plan_id`` (billing starts now)."""
        body: dict[str, Any] = {"planId": plan_id}
        if quantity is not None:
            body["quantity"] = str(quantity)
        response = self._call(
            "POST", f"/saas/subscriptions/{quote(subscription_id)}/activate", json_body=body
        )
        self._raise_for_status(response)

    def get_subscription(self, subscription_id: str) -> dict[str, Any]:
        """Return the subscription object."""
        response = self._call("GET", f"/saas/subscriptions/{quote(subscription_id)}")
        self._raise_for_status(response)
        return response.json()

    def list_subscriptions(self) -> Iterator[dict[str, Any]]:
        """Yield every subscription of the publisher, following ``@nextLink`` pages."""
        response = self._call("GET", "/saas/subscriptions")
        while True:
            self._raise_for_status(response)
            page = response.json()
            yield from page.get("subscriptions") or []
            next_link = page.get("@nextLink") or page.get("nextLink")
            if not next_link:
                return
            response = self._call("GET", next_link)

    def list_operations(self, subscription_id: str) -> list[dict[str, Any]]:
        """Return the subscription's pending operations."""
        response = self._call("GET", f"/saas/subscriptions/{quote(subscription_id)}/operations")
        self._raise_for_status(response)
        return list(response.json().get("operations") or [])

    def get_operation(self, subscription_id: str, operation_id: str) -> dict[str, Any]:
        """Return one operation (the authoritative copy of a webhook's payload)."""
        response = self._call(
            "GET", f"/saas/subscriptions/{quote(subscription_id)}/operations/{quote(operation_id)}"
        )
        self._raise_for_status(response)
        return response.json()

    def update_operation(self, subscription_id: str, operation_id: str, status: str) -> None:
        """Acknowledge a ChangePlan/ChangeQuantity operation with ``Success`` or ``Failure``."""
        if status not in ("Success", "Failure"):
            raise ValueError("status must be 'Success' or 'Failure'")
        response = self._call(
            "PATCH",
            f"/saas/subscriptions/{quote(subscription_id)}/operations/{quote(operation_id)}",
            json_body={"status": status},
        )
        if response.status_code == 409:
            raise OperationSuperseded(
                f"operation {operation_id} was superseded: {_error_message(response)}"
            )
        self._raise_for_status(response)

    # Notifications -------------------------------------------------------------------------

    def parse_notification(
        self, headers: Mapping[str, str], body: bytes
    ) -> ContractNotification:
        """Verify the webhook's bearer JWT and normalize its payload.

        The JWT authenticates the sender but does not cover the body, so a handler must
        confirm the payload with ``get_operation`` before acting on it (this method stays
        pure: no calls besides fetching signing keys). ``extra`` carries ``operation_id`` and
        ``ack_required`` (ChangePlan/ChangeQuantity must be answered with
        ``update_operation``).
        """
        if self.webhook_verifier is None:
            raise UnverifiedNotification("no webhook verifier configured")
        token = _bearer_token(headers)
        claims = self.webhook_verifier.verify(token)
        payload = _parse_payload(body)
        return _notification(payload, claims)

    # HTTP plumbing -------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path_or_url: str,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one API call with auth and correlation headers, retrying transient failures."""
        if path_or_url.startswith(("http://", "https://")):
            url, params = path_or_url, None  # a @nextLink already carries its query
        else:
            url, params = self.base_url + path_or_url, {"api-version": API_VERSION}
        attempts = len(self._retry_delays) + 1
        reauthenticated = False
        attempt = 0
        while True:
            request_headers = {
                "Authorization": f"Bearer {self._bearer()}",
                "x-ms-requestid": str(uuid.uuid4()),
                "x-ms-correlationid": str(uuid.uuid4()),
                "Content-Type": "application/json",
                **(headers or {}),
            }
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    data=None if json_body is None else json.dumps(json_body),
                    headers=request_headers,
                    timeout=self._timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure = f"{method} {path_or_url}: {type(exc).__name__}"
            else:
                if response.status_code in (401, 403) and not reauthenticated:
                    # A revoked or rotated token: drop it and ask for a fresh one once.
                    reauthenticated = True
                    self._forget_token()
                    continue
                if response.status_code not in _RETRYABLE_STATUS:
                    return response
                failure = f"{method} {path_or_url}: HTTP {response.status_code}"
            attempt += 1
            if attempt >= attempts:
                raise TransientMarketplaceError(failure)
            self._sleep(self._retry_delays[attempt - 1])

    def _raise_for_status(self, response: requests.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _error_message(response)
        if status in (401, 403):
            raise PermanentMarketplaceError(
                f"Marketplace API refused the credentials (HTTP {status}): {message}"
            )
        raise PermanentMarketplaceError(f"Marketplace API answered HTTP {status}: {message}")

    def _bearer(self) -> str:
        with self._token_lock:
            token = self._token
            if token is None or self._clock() >= token.expires_on - _TOKEN_REFRESH_MARGIN:
                try:
                    token = self.credential.get_token(MARKETPLACE_SCOPE)
                except ClientAuthenticationError as exc:
                    raise PermanentMarketplaceError(f"could not get a token: {exc}") from None
                except Exception as exc:  # network trouble reaching the identity provider
                    raise TransientMarketplaceError(f"could not get a token: {exc}") from None
                self._token = token
            return token.token

    def _forget_token(self) -> None:
        with self._token_lock:
            self._token = None


# Pure helpers ------------------------------------------------------------------------------


def _event_body(record: UsageRecord) -> dict[str, Any]:
    return {
        "resourceId": record.identifiers["resource_id"],
        "quantity": float(record.quantity),
        "dimension": record.dimension,
        "effectiveStartTime": record.hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "planId": record.identifiers["plan_id"],
    }


def _pair_results(
    chunk: list[_Event], results: list[dict[str, Any]]
) -> list[tuple[_Event, dict[str, Any]]]:
    """Match results to events: by position when the counts agree, else by event key.

    An event left without a result gets ``{}``, which becomes ``FAILED`` (safe to resend).
    """
    if len(results) == len(chunk):
        return list(zip(chunk, results))
    by_key: dict[tuple[str, str, str], dict[str, Any]] = {}
    for result in results:
        try:
            hour = _hour_stamp(result["effectiveStartTime"])
            by_key.setdefault((result["resourceId"], result["dimension"], hour), result)
        except (KeyError, ValueError):
            continue
    return [(event, by_key.get(event.match_key, {})) for event in chunk]


def _hour_stamp(value: str) -> str:
    moment = _parse_time(value)
    return moment.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _outcome(key: str, result: Mapping[str, Any]) -> Outcome:
    status = str(result.get("status") or "")
    if not status:
        return Outcome(key, OutcomeStatus.FAILED, "no result returned for this event")
    if status == "Accepted":
        return Outcome(key, OutcomeStatus.ACCEPTED, marketplace_record_id=result.get("usageEventId"))
    if status == "Duplicate":
        error = result.get("error") or {}
        accepted = (error.get("additionalInfo") or {}).get("acceptedMessage") or {}
        quantity = accepted.get("quantity")
        kept = None if quantity is None else int(float(quantity))
        return Outcome(
            key,
            OutcomeStatus.DUPLICATE,
            detail=f"Duplicate: accepted quantity {kept}",
            marketplace_record_id=accepted.get("usageEventId"),
            accepted_quantity=kept,
        )
    message = _result_message(result)
    detail = f"{status}: {message}" if message else status
    if status in _NOT_SUBSCRIBED_STATUSES:
        return Outcome(key, OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED, detail)
    # Expired, InvalidDimension, InvalidQuantity, BadArgument, Error and anything new.
    return Outcome(key, OutcomeStatus.REJECTED, detail)


def _result_message(result: Mapping[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, Mapping):
        details = error.get("details") or []
        parts = [d.get("message", "") for d in details if isinstance(d, Mapping)]
        return "; ".join(p for p in parts if p) or str(error.get("message") or "")
    return str(result.get("message") or "")


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if not isinstance(body, Mapping):
        return str(body)[:300]
    details = [d.get("message", "") for d in body.get("details") or [] if isinstance(d, Mapping)]
    message = str(body.get("message") or "")
    return "; ".join(p for p in [message, *details] if p) or json.dumps(body)[:300]


def _bearer_token(headers: Mapping[str, str]) -> str:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnverifiedNotification("missing bearer token")
    return token.strip()


def _parse_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedNotification("body is not JSON") from None
    if not isinstance(payload, dict):
        raise MalformedNotification("body is not a JSON object")
    # Microsoft's payloads mix `Id`/`PlanId` with camelCase keys: read keys case-insensitively.
    return {str(k).lower(): v for k, v in payload.items()}


def _notification(payload: Mapping[str, Any], claims: Mapping[str, Any]) -> ContractNotification:
    operation_id = _text(payload.get("id"))
    if not operation_id:
        raise MalformedNotification("missing operation id", field="id")
    action = _text(payload.get("action"))
    if not action:
        raise MalformedNotification("missing action", field="action")
    subscription = payload.get("subscription")
    subscription = (
        {str(k).lower(): v for k, v in subscription.items()} if isinstance(subscription, dict) else {}
    )
    subscription_id = _text(payload.get("subscriptionid")) or _text(subscription.get("id"))
    if not subscription_id:
        raise MalformedNotification("missing subscriptionId", field="subscriptionId")
    plan = _text(payload.get("planid")) or _text(subscription.get("planid"))
    identifiers = {
        "subscription_id": subscription_id,
        "resource_id": subscription_id,
        "offer_id": _text(payload.get("offerid")) or _text(subscription.get("offerid")),
        "plan_id": plan,
        "publisher_id": _text(payload.get("publisherid")) or _text(subscription.get("publisherid")),
    }
    timestamp = _text(payload.get("timestamp"))
    try:
        effective_at = _parse_time(timestamp) if timestamp else None
    except ValueError:
        raise MalformedNotification("timeStamp is not an ISO-8601 time", field="timeStamp") from None
    kind = _ACTION_KINDS.get(action.lower(), NotificationKind.IGNORED)
    extra: dict[str, Any] = {
        "operation_id": operation_id,
        "activity_id": _text(payload.get("activityid")),
        "status": _text(payload.get("status")),
        "operation_request_source": _text(payload.get("operationrequestsource")),
        "ack_required": action.lower() in _ACK_ACTIONS,
        # The JWT does not cover the body: confirm with get_operation before acting.
        "confirm_with_get_operation": True,
        "token_tenant_id": claims.get("tid"),
    }
    if subscription.get("saassubscriptionstatus"):
        extra["subscription_status"] = subscription["saassubscriptionstatus"]
    return ContractNotification(
        marketplace=Marketplace.AZURE,
        delivery_id=operation_id,
        kind=kind,
        action=action,
        identifiers={k: v for k, v in identifiers.items() if v},
        plan=plan or None,
        quantity=_quantity(payload.get("quantity", subscription.get("quantity"))),
        effective_at=effective_at,
        extra=extra,
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _quantity(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise MalformedNotification("quantity is not a number", field="quantity") from None


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+23:59 has no UTC value
        raise ValueError(f"{value!r} is out of range") from None


# Composition root --------------------------------------------------------------------------


def build_azure_adapter(settings: Any, **overrides: Any) -> AzureMarketplace:
    """Build the adapter from settings: the emulator in sandbox mode, Microsoft in live mode.

    ``overrides`` may replace ``session``, ``credential``, ``base_url``, ``webhook_verifier``
    or any other keyword of ``AzureMarketplace``; in sandbox mode also the emulator's
    ``tenant_id``, ``client_id`` and ``client_secret`` (default: the ``SANDBOX_*`` values).
    """
    session = overrides.pop("session", None) or requests.Session()
    if settings.MARKETPLACE_MODE == "live":
        missing = [
            name
            for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET")
            if not getattr(settings, name)
        ]
        if missing and not {"credential", "webhook_verifier"} <= overrides.keys():
            raise PermanentMarketplaceError(f"live Azure mode needs {', '.join(missing)}")
        tenant_id, client_id = settings.AZURE_TENANT_ID, settings.AZURE_CLIENT_ID
        authority, base_url = LIVE_AUTHORITY, LIVE_BASE_URL
        if "credential" not in overrides:
            from azure.identity import ClientSecretCredential

            overrides["credential"] = ClientSecretCredential(
                tenant_id, client_id, settings.AZURE_CLIENT_SECRET
            )
    else:
        # The emulator runs with its own sandbox identities (``marketsync emulators`` builds
        # it with defaults), so the live AZURE_* settings do not apply here.
        emulator = settings.emulator_url("azure")
        tenant_id = overrides.pop("tenant_id", SANDBOX_TENANT_ID)
        client_id = overrides.pop("client_id", SANDBOX_CLIENT_ID)
        client_secret = overrides.pop("client_secret", SANDBOX_CLIENT_SECRET)
        authority, base_url = emulator, f"{emulator}/api"
        if "credential" not in overrides:
            overrides["credential"] = SandboxCredential(
                emulator, tenant_id, client_id, client_secret, session=session
            )
    overrides.setdefault("base_url", base_url)
    if "webhook_verifier" not in overrides:
        overrides["webhook_verifier"] = WebhookVerifier(
            authority=authority, tenant_id=tenant_id, audience=client_id, session=session
        )
    credential = overrides.pop("credential")
    return AzureMarketplace(session, credential, **overrides)


def _azure_record_identifiers(columns: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, str]:
    return {"resource_id": columns.get("azure_subscription_id") or ids.get("subscription_id", ""),
            "plan_id": columns.get("plan_id") or ids.get("plan_id", "")}


RULES = MarketplaceRules(
    marketplace=Marketplace.AZURE,
    batch_size=25,  # the batch usage event API takes at most 25 events
    final_usage_window=timedelta(hours=24),  # usage events are accepted for 24 hours
    hourly_zero_record=False,  # quantities must be above 0
    flush_lookback_hours=23,  # any unused hour of the last 24, none after the cancellation
    contract_key_fields=("subscription_id", "resource_id"),
    product_fields=("offer_id", "product_id"),
    record_identifiers=_azure_record_identifiers,
    customer_identity=lambda ids: ids.get("azure_subscription_id") or ids.get("subscription_id"),
)
