"""Google Cloud Marketplace (integrated SaaS): Service Control usage reports, Partner
Procurement calls and verified Pub/Sub push notifications.

Usage goes out as one Service Control ``Operation`` per record: ``services.check`` first
(a consumer whose service is not active must not be billed), then ``services.report`` for
the records that passed, batched under the 1 MB request limit. Each operation's
``operationId`` is a UUID v5 derived from the record's ledger key, dimension and hour, so
resending after an ambiguous failure can never bill twice (docs/marketplaces.md §4.2, §4.3).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Callable, Mapping

from config.settings import Settings
from marketplaces.base import ContractNotification, MarketplaceRules, Marketplace, PermanentMarketplaceError
from marketplaces.gcp.metering import (
    CHECK_CONCURRENCY,
    MAX_OPERATIONS_PER_CALL,
    MAX_REQUEST_BYTES,
    OPERATION_NAME,
    OPERATION_NAMESPACE,
    Metering,
    _classify,
    operation_id_for,
)
from marketplaces.gcp.notifications import (
    EMULATOR_CERTS_PATH,
    GOOGLE_ISSUERS,
    SANDBOX_PUSH_SERVICE_ACCOUNT,
    Notifications,
    PushTokenVerifier,
    parse_push_envelope,
    parse_rfc3339,
)
from marketplaces.gcp.labels import label_keys_problem
from marketplaces.gcp.procurement import Procurement


SANDBOX_PROVIDER_ID = "marketsync-sandbox"
SANDBOX_SERVICE_NAME = "marketsync-sandbox.endpoints.marketsync-sandbox.cloud.goog"


class GcpMarketplace(Metering, Procurement, Notifications):
    """Report usage to Service Control and speak to the Partner Procurement API."""

    marketplace = Marketplace.GCP

    def __init__(
        self,
        client: Any,
        *,
        service_name: str,
        procurement: Any = None,
        provider_id: str | None = None,
        push_verifier: Callable[[str | None], Mapping[str, Any]] | None = None,
        max_operations_per_call: int = MAX_OPERATIONS_PER_CALL,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        timeout: float = 30.0,
        retry: Any = None,
        check_concurrency: int = CHECK_CONCURRENCY,
    ):
        """Wrap a ``servicecontrol_v1.ServiceControllerClient`` and optional procurement resource.

        ``procurement`` is the ``cloudcommerceprocurement`` v1 discovery resource; ``retry``
        is passed to the Service Control calls (default none: the job retries with backoff).
        """
        if not service_name:
            raise PermanentMarketplaceError("GCP service name is not configured (GCP_SERVICE_NAME)")
        self.client = client
        self.service_name = service_name
        self.procurement = procurement
        self.provider_id = provider_id
        self.push_verifier = push_verifier
        self.max_operations_per_call = max_operations_per_call
        self.max_request_bytes = max_request_bytes
        self.timeout = timeout
        self.retry = retry
        self.check_concurrency = check_concurrency
        self._check_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()


# Composition --------------------------------------------------------------------------------


def build_gcp_adapter(settings: Settings, **overrides: Any) -> GcpMarketplace:
    """Build the adapter from settings: the emulator in sandbox mode, Google in live mode.

    ``overrides`` replace constructor arguments (``client``, ``procurement``,
    ``push_verifier``, ``service_name``, ``provider_id``, ...) or pass ``http`` (a
    requests session for the sandbox certs URL).
    """
    from google.cloud import servicecontrol_v1
    from googleapiclient.discovery import build

    http = overrides.pop("http", None)
    sandbox = settings.MARKETPLACE_MODE == "sandbox"
    if sandbox:
        from google.auth.credentials import AnonymousCredentials

        base_url = settings.emulator_url("gcp")
        credentials: Any = AnonymousCredentials()
        endpoint_options: dict[str, Any] = {"api_endpoint": base_url}
        service_name = settings.GCP_SERVICE_NAME or SANDBOX_SERVICE_NAME
        provider_id = settings.GCP_PROVIDER_ID or SANDBOX_PROVIDER_ID
        service_account = settings.GCP_PUSH_SERVICE_ACCOUNT or SANDBOX_PUSH_SERVICE_ACCOUNT
        certs_url: str | None = base_url + EMULATOR_CERTS_PATH
    else:
        credentials = None  # application default credentials (the linked service account)
        endpoint_options = {}
        service_name = settings.GCP_SERVICE_NAME
        provider_id = settings.GCP_PROVIDER_ID
        service_account = settings.GCP_PUSH_SERVICE_ACCOUNT
        certs_url = None

    if "client" not in overrides:
        client_kwargs: dict[str, Any] = {}
        if sandbox:
            client_kwargs = {
                "transport": "rest",
                "credentials": credentials,
                "client_options": endpoint_options,
            }
        overrides["client"] = servicecontrol_v1.ServiceControllerClient(**client_kwargs)
    if "procurement" not in overrides:
        build_kwargs: dict[str, Any] = {"static_discovery": True, "cache_discovery": False}
        if sandbox:
            build_kwargs.update(credentials=credentials, client_options=endpoint_options)
        overrides["procurement"] = build("cloudcommerceprocurement", "v1", **build_kwargs)
    overrides.setdefault(
        "push_verifier",
        PushTokenVerifier(
            audience=settings.GCP_PUSH_AUDIENCE,
            service_account=service_account,
            certs_url=certs_url,
            http=http,
        ),
    )
    overrides.setdefault("service_name", service_name)
    overrides.setdefault("provider_id", provider_id)
    client = overrides.pop("client")
    return GcpMarketplace(client, **overrides)


def _gcp_record_identifiers(columns: Mapping[str, Any], ids: Mapping[str, str]) -> dict[str, str]:
    identifiers = {"consumer_id": ids.get("usage_reporting_id") or ids.get("consumer_id", ""),
                   "entitlement_id": columns.get("gcp_entitlement_id") or ids.get("entitlement_id", "")}
    if ids.get("service_name"):
        identifiers["service_name"] = ids["service_name"]
    return identifiers


def _gcp_event_identifiers(ids: Mapping[str, str]) -> dict[str, str]:
    identifiers = dict(ids)
    if ids.get("entitlement_id"):
        identifiers.setdefault("gcp_entitlement_id", ids["entitlement_id"])
    return identifiers


def _gcp_event_kind(note: ContractNotification, key: str) -> str:
    if note.action == "ENTITLEMENT_DELETED" and key:
        # Google deletes an entitlement without cancelling it first: the contract ends (GET answers 404).
        return "canceled"
    return note.kind.value



RULES = MarketplaceRules(
    marketplace=Marketplace.GCP,
    # No per-call record limit (report calls are split at 100 operations or 1 MB), but one
    # services.check per record: larger batches let the adapter run more checks at once.
    batch_size=100,
    final_usage_window=timedelta(hours=24),
    hourly_zero_record=False,
    flush_lookback_hours=0,
    contract_key_fields=("entitlement_id",),
    product_fields=("product_id", "product", "product_external_name"),
    record_identifiers=_gcp_record_identifiers,
    # One account may hold several orders (entitlements) of one product, and usage belongs to a
    # billing customer: a customer per entitlement keeps each order's usage, and reports, apart.
    customer_identity=lambda ids: ids.get("gcp_entitlement_id") or ids.get("entitlement_id"),
    event_identifiers=_gcp_event_identifiers,
    event_kind=_gcp_event_kind,
    report_window=None,  # Google documents no oldest accepted startTime
    # Google dedupes on the operationId we choose: pinned on the ledger row before the first send.
    pinned_record_id=operation_id_for,
    allocation_keys_problem=label_keys_problem,  # userLabels, one operation per label set (§4.11)
)

__all__ = [
    "CHECK_CONCURRENCY", "EMULATOR_CERTS_PATH", "GOOGLE_ISSUERS", "MAX_OPERATIONS_PER_CALL", "MAX_REQUEST_BYTES",
    "OPERATION_NAME", "OPERATION_NAMESPACE", "RULES", "SANDBOX_PROVIDER_ID", "SANDBOX_PUSH_SERVICE_ACCOUNT",
    "SANDBOX_SERVICE_NAME", "GcpMarketplace", "PushTokenVerifier", "_classify", "build_gcp_adapter",
    "operation_id_for", "parse_push_envelope", "parse_rfc3339",
]
