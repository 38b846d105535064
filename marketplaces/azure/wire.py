"""Azure Marketplace API plumbing shared by metering, fulfillment and notifications: constants,
the authenticated call with its bounded retry, and error translation."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import requests
from azure.core.exceptions import ClientAuthenticationError

from marketplaces.base import NotificationKind, PermanentMarketplaceError, TransientMarketplaceError


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
USAGE_WINDOW = timedelta(hours=24)  # Azure takes usage events up to 24 hours after their hour


_TOKEN_REFRESH_MARGIN = 300  # seconds before expires_on at which a cached token is renewed
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


_REJECTED_STATUSES = frozenset(
    {"Expired", "InvalidDimension", "InvalidQuantity", "BadArgument", "Error"}
)


_NOT_SUBSCRIBED_STATUSES = frozenset({"ResourceNotFound", "ResourceNotAuthorized"})
# The subscription exists but takes no usage now (Suspended): hold the event, send it after reinstatement.
_NOT_ACTIVE_STATUSES = frozenset({"ResourceNotActive"})
# effectiveStartTime older than the window (24 hours): Azure will never take it.
_EXPIRED_STATUSES = frozenset({"Expired"})


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


class ApiClient:
    """Authenticated calls to the Marketplace API (needs ``_session``, ``credential``, ``base_url``)."""

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


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+23:59 has no UTC value
        raise ValueError(f"{value!r} is out of range") from None
