"""The Azure adapter's own logic: result mapping, the §7.2 batch vector, the composition root."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
import responses
from azure.core.credentials import AccessToken
from azure.identity import ClientSecretCredential

from config.settings import Settings
from marketplaces.azure import (
    LIVE_BASE_URL,
    AzureMarketplace,
    SandboxCredential,
    build_azure_adapter,
)
from marketplaces.base import (
    Marketplace,
    OutcomeStatus,
    PermanentMarketplaceError,
    UsageRecord,
)

HOUR = datetime(2026, 11, 21, 10, tzinfo=timezone.utc)
BATCH_URL = f"{LIVE_BASE_URL}/batchUsageEvent"

# §7.2 batch response, verbatim.
BATCH_RESPONSE = {
    "count": 2,
    "result": [
        {"usageEventId": "f0e1d2c3-b4a5-4968-8778-695a4b3c2d1e", "status": "Accepted",
         "messageTime": "2026-11-21T11:04:12.3458658Z", "resourceId": "37f9dea2-4345-438f-b0bd-03d40d28c7e0",
         "quantity": 1250.0, "dimension": "usage_fee", "effectiveStartTime": "2026-11-21T10:00:00Z",
         "planId": "payg"},
        {"status": "Duplicate", "messageTime": "0001-01-01T00:00:00",
         "error": {"additionalInfo": {"acceptedMessage": {
             "usageEventId": "a9b8c7d6-e5f4-4321-8a9b-0c1d2e3f4a5b", "status": "Duplicate",
             "messageTime": "2026-11-21T10:59:02.1000000Z", "resourceId": "8e1f2a3b-4c5d-4e6f-9a7b-8c9d0e1f2a3b",
             "quantity": 40.0, "dimension": "usage_fee", "effectiveStartTime": "2026-11-21T10:00:00Z",
             "planId": "payg"}},
             "message": "This usage event already exist.", "code": "Conflict"},
         "resourceId": "8e1f2a3b-4c5d-4e6f-9a7b-8c9d0e1f2a3b", "quantity": 40.0, "dimension": "usage_fee",
         "effectiveStartTime": "2026-11-21T10:00:00Z", "planId": "payg"},
    ],
}


class _StaticCredential:
    """A credential handing out one fixed token (the HTTP layer is replayed, not real)."""

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        return AccessToken("static-token", 2**40)


def _adapter() -> AzureMarketplace:
    return AzureMarketplace(requests.Session(), _StaticCredential(), retry_delays=())


def _record(key: str, resource_id: str, quantity: int) -> UsageRecord:
    return UsageRecord(key, Marketplace.AZURE, {"resource_id": resource_id, "plan_id": "payg"},
                       "usage_fee", HOUR, quantity)


@responses.activate
def test_batch_vector_maps_to_outcomes() -> None:
    """The §7.2 request/response pair yields ACCEPTED and DUPLICATE (quantity 40) in order."""
    responses.post(BATCH_URL, json=BATCH_RESPONSE)
    outcomes = _adapter().report([
        _record("a", "37f9dea2-4345-438f-b0bd-03d40d28c7e0", 1250),
        _record("b", "8e1f2a3b-4c5d-4e6f-9a7b-8c9d0e1f2a3b", 40),
    ])

    sent = responses.calls[0].request
    assert json.loads(sent.body) == {"request": [
        {"resourceId": "37f9dea2-4345-438f-b0bd-03d40d28c7e0", "quantity": 1250.0, "dimension": "usage_fee",
         "effectiveStartTime": "2026-11-21T10:00:00Z", "planId": "payg"},
        {"resourceId": "8e1f2a3b-4c5d-4e6f-9a7b-8c9d0e1f2a3b", "quantity": 40.0, "dimension": "usage_fee",
         "effectiveStartTime": "2026-11-21T10:00:00Z", "planId": "payg"},
    ]}
    assert "api-version=2018-08-31" in sent.url
    assert sent.headers["Authorization"] == "Bearer static-token"
    assert sent.headers["x-ms-requestid"] and sent.headers["x-ms-correlationid"]
    accepted, duplicate = outcomes
    assert (accepted.status, accepted.marketplace_record_id) == (
        OutcomeStatus.ACCEPTED, "f0e1d2c3-b4a5-4968-8778-695a4b3c2d1e")
    assert (duplicate.status, duplicate.accepted_quantity, duplicate.marketplace_record_id) == (
        OutcomeStatus.DUPLICATE, 40, "a9b8c7d6-e5f4-4321-8a9b-0c1d2e3f4a5b")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param("Expired", OutcomeStatus.EXPIRED, id="expired"),
        pytest.param("InvalidDimension", OutcomeStatus.REJECTED, id="invalid-dimension"),
        pytest.param("InvalidQuantity", OutcomeStatus.REJECTED, id="invalid-quantity"),
        pytest.param("BadArgument", OutcomeStatus.REJECTED, id="bad-argument"),
        pytest.param("Error", OutcomeStatus.REJECTED, id="error"),
        pytest.param("SomethingNew", OutcomeStatus.REJECTED, id="unknown-status"),
        pytest.param("ResourceNotFound", OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED, id="not-found"),
        pytest.param("ResourceNotActive", OutcomeStatus.NOT_ACTIVE, id="not-active"),
        pytest.param("ResourceNotAuthorized", OutcomeStatus.CUSTOMER_NOT_SUBSCRIBED, id="not-authorized"),
    ],
)
@responses.activate
def test_result_status_mapping(status: str, expected: OutcomeStatus) -> None:
    """Every per-event status maps to its outcome, with the status named in the detail."""
    responses.post(BATCH_URL, json={"count": 1, "result": [{"status": status, "resourceId": "r"}]})
    [outcome] = _adapter().report([_record("k", "r", 3)])
    assert outcome.status is expected and outcome.detail.startswith(status)


@responses.activate
def test_results_are_matched_by_key_when_counts_differ() -> None:
    """If the API returns fewer results than events, results are matched by key, the rest FAILED."""
    responses.post(BATCH_URL, json={"count": 1, "result": [BATCH_RESPONSE["result"][0]]})
    first, second = _adapter().report([
        _record("b", "8e1f2a3b-4c5d-4e6f-9a7b-8c9d0e1f2a3b", 40),
        _record("a", "37f9dea2-4345-438f-b0bd-03d40d28c7e0", 1250),
    ])
    assert first.status is OutcomeStatus.FAILED and "no result" in first.detail
    assert second.status is OutcomeStatus.ACCEPTED


def test_records_without_identifiers_are_rejected_locally() -> None:
    """A record missing resource_id or plan_id is REJECTED without any call."""
    record = UsageRecord("k", Marketplace.AZURE, {"resource_id": "r"}, "usage_fee", HOUR, 3)
    [outcome] = _adapter().report([record])
    assert outcome.status is OutcomeStatus.REJECTED and "plan_id" in outcome.detail


@responses.activate
def test_unexpected_client_error_is_permanent() -> None:
    """An HTTP 404 for the batch endpoint (bad base URL) is a permanent error."""
    responses.post(BATCH_URL, status=404, json={"message": "not here"})
    with pytest.raises(PermanentMarketplaceError, match="404"):
        _adapter().report([_record("k", "r", 3)])


def test_live_mode_uses_microsoft_endpoints() -> None:
    """In live mode the adapter targets marketplaceapi.microsoft.com and the tenant's Entra keys."""
    settings = Settings.from_env({
        "MARKETPLACE_MODE": "live", "AZURE_TENANT_ID": "72ab1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d",
        "AZURE_CLIENT_ID": "b0c1d2e3-f4a5-4b6c-8d7e-9f0a1b2c3d4e", "AZURE_CLIENT_SECRET": "s3cret",
    })
    adapter = build_azure_adapter(settings)
    assert adapter.base_url == LIVE_BASE_URL
    assert isinstance(adapter.credential, ClientSecretCredential)
    verifier = adapter.webhook_verifier
    assert verifier is not None and verifier.audience == "b0c1d2e3-f4a5-4b6c-8d7e-9f0a1b2c3d4e"
    assert verifier.openid_configuration_url == (
        "https://login.microsoftonline.com/72ab1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d/v2.0/.well-known/openid-configuration"
    )
    assert verifier.issuers == {
        "https://sts.windows.net/72ab1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d/",
        "https://login.microsoftonline.com/72ab1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d/v2.0",
    }


def test_live_mode_needs_credentials() -> None:
    """Live mode without the AZURE_* settings refuses to build."""
    with pytest.raises(PermanentMarketplaceError, match="AZURE_CLIENT_SECRET"):
        build_azure_adapter(Settings.from_env({"MARKETPLACE_MODE": "live"}))


def test_sandbox_mode_uses_the_emulator() -> None:
    """In sandbox mode the adapter, its tokens and its keys all come from the emulator URL."""
    settings = Settings.from_env({"AZURE_EMULATOR_PORT": "18102"})
    adapter = build_azure_adapter(settings)
    assert adapter.base_url == "http://127.0.0.1:18102/api"
    assert isinstance(adapter.credential, SandboxCredential)
    assert adapter.credential.token_url == (
        "http://127.0.0.1:18102/marketsync-sandbox-tenant/oauth2/v2.0/token"
    )
