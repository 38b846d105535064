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

import threading
import time
from datetime import timedelta
from typing import Any, Callable, Mapping, Sequence

import requests
from azure.core.credentials import AccessToken

from marketplaces.base import MarketplaceRules, Marketplace, PermanentMarketplaceError
from marketplaces.azure.auth import SandboxCredential, WebhookVerifier
from marketplaces.azure.fulfillment import Fulfillment
from marketplaces.azure.metering import Metering
from marketplaces.azure.notifications import Notifications
from marketplaces.azure.usage_events import UsageEvents
from marketplaces.azure.wire import (
    API_VERSION,
    BATCH_LIMIT,
    LIVE_AUTHORITY,
    LIVE_BASE_URL,
    MARKETPLACE_APP_ID,
    MARKETPLACE_SCOPE,
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_TENANT_ID,
    USAGE_WINDOW,
    ZERO_QUANTITY_DETAIL,
    ApiClient,
    OperationSuperseded,
)


class AzureMarketplace(Metering, UsageEvents, Fulfillment, Notifications, ApiClient):
    """The Azure SaaS adapter: metering and its read-back, SaaS Fulfillment v2 calls and webhook parsing."""

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


def _azure_event_identifiers(ids: Mapping[str, str]) -> dict[str, str]:
    # The contract row keys the subscription as azure_subscription_id (the usage record's resource_id).
    identifiers = dict(ids)
    identifiers.setdefault("azure_subscription_id", ids.get("subscription_id") or ids.get("resource_id", ""))
    return identifiers


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
    event_identifiers=_azure_event_identifiers,
    report_window=USAGE_WINDOW,  # effectiveStartTime must be within the last 24 hours
    hold_while_suspended=True,  # a Suspended subscription takes no usage until reinstated
)

__all__ = [
    "API_VERSION", "BATCH_LIMIT", "LIVE_AUTHORITY", "LIVE_BASE_URL", "MARKETPLACE_APP_ID", "MARKETPLACE_SCOPE",
    "RULES", "SANDBOX_CLIENT_ID", "SANDBOX_CLIENT_SECRET", "SANDBOX_TENANT_ID", "USAGE_WINDOW", "ZERO_QUANTITY_DETAIL",
    "AzureMarketplace", "OperationSuperseded", "SandboxCredential", "WebhookVerifier", "build_azure_adapter",
]
