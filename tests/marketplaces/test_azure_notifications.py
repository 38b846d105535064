"""Azure SaaS fulfillment webhooks: JWT verification and normalization (§2.3, §7.2 vectors)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, request

from marketplaces.azure import (
    MARKETPLACE_APP_ID,
    SANDBOX_CLIENT_ID,
    SANDBOX_TENANT_ID,
    AzureMarketplace,
    WebhookVerifier,
)
from marketplaces.base import (
    ContractNotification,
    Marketplace,
    MalformedNotification,
    NotificationKind,
    UnverifiedNotification,
)
from marketplaces.emulators.server import EmulatorServer
from tests.marketplaces.azure_support import AzureSandbox

SUB_ID = "37f9dea2-4345-438f-b0bd-03d40d28c7e0"

# §7.2 vectors, verbatim.
UNSUBSCRIBE = {
    "id": "c4a1d7e2-9b3f-4e6a-8d5c-2f1e0b9a8c7d",
    "activityId": "c4a1d7e2-9b3f-4e6a-8d5c-2f1e0b9a8c7d",
    "publisherId": "contosoinc",
    "offerId": "orb-sync-demo",
    "planId": "payg",
    "quantity": 1,
    "subscriptionId": SUB_ID,
    "timeStamp": "2026-11-21T15:02:44.5038009Z",
    "action": "Unsubscribe",
    "status": "Succeeded",
    "operationRequestSource": "Azure",
    "subscription": {
        "id": SUB_ID,
        "name": "Fabrikam analytics",
        "publisherId": "contosoinc",
        "offerId": "orb-sync-demo",
        "planId": "payg",
        "quantity": None,
        "beneficiary": {"emailId": "admin@fabrikam.example", "objectId": "5b8f1e2a-0c3d-4e4f-9a5b-6c7d8e9f0a1b",
                        "tenantId": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a", "puid": None},
        "purchaser": {"emailId": "admin@fabrikam.example", "objectId": "5b8f1e2a-0c3d-4e4f-9a5b-6c7d8e9f0a1b",
                      "tenantId": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a", "puid": None},
        "allowedCustomerOperations": ["Delete", "Update", "Read"],
        "sessionMode": "None",
        "isFreeTrial": False,
        "isTest": False,
        "sandboxType": "None",
        "saasSubscriptionStatus": "Unsubscribed",
        "term": {"startDate": "2026-11-01T00:00:00Z", "endDate": "2026-11-30T00:00:00Z",
                 "termUnit": "P1M", "chargeDuration": None},
        "autoRenew": True,
        "created": "2026-11-01T08:15:03.1234567Z",
        "lastModified": "2026-11-21T15:02:40.7200000Z",
    },
    "purchaseToken": None,
}
CHANGE_QUANTITY = {"id": "0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d", "activityId": "0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d", "publisherId": "contosoinc", "offerId": "orb-sync-demo", "planId": "payg", "quantity": 25, "subscriptionId": SUB_ID, "timeStamp": "2026-11-21T11:20:05.1419317Z", "action": "ChangeQuantity", "status": "InProgress", "operationRequestSource": "Partner"}  # noqa: E501
SUSPEND = {"id": "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e", "activityId": "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e", "publisherId": "contosoinc", "offerId": "orb-sync-demo", "planId": "payg", "quantity": 1, "subscriptionId": SUB_ID, "timeStamp": "2026-11-21T12:00:41.137017Z", "action": "Suspend", "status": "Succeeded", "operationRequestSource": "Azure"}  # noqa: E501
REINSTATE = {"id": "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "activityId": "2c3d4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f", "subscriptionId": SUB_ID, "publisherId": "contosoinc", "offerId": "orb-sync-demo", "planId": "payg", "quantity": "1", "timeStamp": "2026-11-21T13:17:31.7350641Z", "action": "Reinstate", "status": "InProgress"}  # noqa: E501


def _variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, "id": str(uuid.uuid4()), **changes}


IDENTIFIERS = {
    "subscription_id": SUB_ID,
    "resource_id": SUB_ID,
    "offer_id": "orb-sync-demo",
    "plan_id": "payg",
    "publisher_id": "contosoinc",
}


@pytest.fixture(scope="module")
def azure_sandbox() -> Iterator[AzureSandbox]:
    sandbox = AzureSandbox()
    yield sandbox
    sandbox.close()


@pytest.fixture
def sandbox(azure_sandbox: AzureSandbox) -> AzureSandbox:
    azure_sandbox.reset()
    return azure_sandbox


def _parse(sandbox: AzureSandbox, payload: Any, token: str | None = None) -> ContractNotification:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return sandbox.adapter.parse_notification(
        {"Authorization": f"Bearer {token or sandbox.token('webhook')}",
         "Content-Type": "application/json"},
        body,
    )


# The §7.2 vectors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "kind", "plan", "quantity", "ack"),
    [
        pytest.param(UNSUBSCRIBE, NotificationKind.CANCELED, "payg", 1, False, id="unsubscribe"),
        pytest.param(CHANGE_QUANTITY, NotificationKind.MODIFIED, "payg", 25, True, id="change-quantity"),
        pytest.param(SUSPEND, NotificationKind.SUSPENDED, "payg", 1, False, id="suspend"),
        pytest.param(REINSTATE, NotificationKind.REINSTATED, "payg", 1, False, id="reinstate-quantity-string"),
        pytest.param(_variant(SUSPEND, action="Subscribe"), NotificationKind.CREATED, "payg", 1, False,
                     id="subscribe"),
        pytest.param(_variant(CHANGE_QUANTITY, action="ChangePlan", planId="gold"), NotificationKind.MODIFIED,
                     "gold", 25, True, id="change-plan"),
        pytest.param(_variant(SUSPEND, action="Renew"), NotificationKind.RENEWED, "payg", 1, False, id="renew"),
        pytest.param(_variant(SUSPEND, action="Transfer"), NotificationKind.IGNORED, "payg", 1, False,
                     id="unknown-action"),
    ],
)
def test_vector_normalizes(
    sandbox: AzureSandbox, payload: dict, kind: NotificationKind, plan: str, quantity: int, ack: bool
) -> None:
    """Each §7.2 webhook, signed like Microsoft signs it, becomes the expected notification."""
    notification = _parse(sandbox, payload)
    assert notification.marketplace is Marketplace.AZURE
    assert notification.kind is kind
    assert notification.action == payload["action"]
    assert notification.delivery_id == payload["id"]
    assert dict(notification.identifiers) == {**IDENTIFIERS, "plan_id": plan}
    assert (notification.plan, notification.quantity) == (plan, quantity)
    assert notification.effective_at == datetime.fromisoformat(payload["timeStamp"].replace("Z", "+00:00"))
    assert notification.extra["operation_id"] == payload["id"]
    assert notification.extra["ack_required"] is ack
    assert notification.extra["confirm_with_get_operation"] is True


def test_unsubscribe_carries_cancellation_time_and_status(sandbox: AzureSandbox) -> None:
    """The Unsubscribe vector is effective at its timeStamp and reports the subscription status."""
    notification = _parse(sandbox, UNSUBSCRIBE)
    assert notification.effective_at == datetime(2026, 11, 21, 15, 2, 44, 503800, tzinfo=timezone.utc)
    assert notification.extra["subscription_status"] == "Unsubscribed"
    assert notification.extra["status"] == "Succeeded"


def test_keys_are_read_case_insensitively(sandbox: AzureSandbox) -> None:
    """`Id`, `PlanId`, `PublisherId`, `Quantity` (as in real deliveries) parse like camelCase."""
    mixed = {("Id" if k == "id" else k[0].upper() + k[1:]): v for k, v in CHANGE_QUANTITY.items()}
    mixed["Quantity"] = "25"
    assert _parse(sandbox, mixed) == _parse(sandbox, CHANGE_QUANTITY)


def test_v2_tokens_are_accepted(sandbox: AzureSandbox) -> None:
    """A v2 token (v2.0 issuer, azp instead of appid) verifies too."""
    token = sandbox.token(
        "webhook", appid=None, azp=MARKETPLACE_APP_ID, ver="2.0",
        iss=f"https://login.microsoftonline.com/{SANDBOX_TENANT_ID}/v2.0",
    )
    assert _parse(sandbox, SUSPEND, token=token).kind is NotificationKind.SUSPENDED


def test_header_name_is_case_insensitive(sandbox: AzureSandbox) -> None:
    """The bearer token is found under `authorization` as well as `Authorization`."""
    notification = sandbox.adapter.parse_notification(
        {"authorization": f"Bearer {sandbox.token('webhook')}"}, json.dumps(SUSPEND).encode()
    )
    assert notification.delivery_id == SUSPEND["id"]


# Refusals ----------------------------------------------------------------------------------------


def _foreign_token(kid: str | None, **claims: Any) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid} if kid else None)


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda s: s.token("webhook", ttl=-3600), id="expired"),
        pytest.param(lambda s: s.token("webhook", nbf=int(time.time()) + 3600), id="not-yet-valid"),
        pytest.param(lambda s: s.token("webhook", aud="someone-elses-app"), id="wrong-audience"),
        pytest.param(lambda s: s.token("webhook", tid="another-tenant"), id="wrong-tenant"),
        pytest.param(lambda s: s.token("webhook", iss="https://sts.windows.net/another-tenant/"),
                     id="wrong-issuer"),
        pytest.param(lambda s: s.token("webhook", appid="not-the-marketplace"), id="wrong-appid"),
        pytest.param(lambda s: s.token("webhook", appid=None), id="no-appid-or-azp"),
        pytest.param(lambda s: s.token("api"), id="api-token-not-webhook"),
        pytest.param(lambda s: _foreign_token(s.state.kid, **s.state.webhook_claims()), id="foreign-key-same-kid"),
        pytest.param(lambda s: _foreign_token("other-kid", **s.state.webhook_claims()), id="foreign-key"),
        pytest.param(lambda s: _foreign_token(None, **s.state.webhook_claims()), id="no-kid"),
        pytest.param(lambda s: jwt.encode(s.state.webhook_claims(), "a-shared-secret-of-at-least-32-bytes", algorithm="HS256",
                                          headers={"kid": s.state.kid}), id="hs256"),
        pytest.param(lambda s: "not.a.jwt", id="garbage"),
    ],
)
def test_bad_tokens_are_unverified(sandbox: AzureSandbox, make_token) -> None:
    """Expired, misaddressed, foreign-signed or malformed tokens raise UnverifiedNotification."""
    with pytest.raises(UnverifiedNotification):
        _parse(sandbox, SUSPEND, token=make_token(sandbox))


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="not-bearer"),
        pytest.param({"Authorization": "Bearer "}, id="empty"),
    ],
)
def test_missing_token_is_unverified(sandbox: AzureSandbox, headers: dict[str, str]) -> None:
    """Without a bearer token nothing is parsed."""
    with pytest.raises(UnverifiedNotification):
        sandbox.adapter.parse_notification(headers, json.dumps(SUSPEND).encode())


def test_unverified_wins_over_malformed(sandbox: AzureSandbox) -> None:
    """A garbage body under a bad token is reported as unverified (401), not malformed."""
    with pytest.raises(UnverifiedNotification):
        sandbox.adapter.parse_notification({"Authorization": "Bearer x.y.z"}, b"{not json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b"{not json", None, id="not-json"),
        pytest.param(b"[1, 2]", None, id="not-object"),
        pytest.param(json.dumps({k: v for k, v in SUSPEND.items() if k != "id"}).encode(), "id", id="no-id"),
        pytest.param(json.dumps({k: v for k, v in SUSPEND.items() if k != "action"}).encode(), "action",
                     id="no-action"),
        pytest.param(json.dumps({k: v for k, v in SUSPEND.items() if k != "subscriptionId"}).encode(),
                     "subscriptionId", id="no-subscription"),
        pytest.param(json.dumps({**SUSPEND, "quantity": "many"}).encode(), "quantity", id="bad-quantity"),
        pytest.param(json.dumps({**SUSPEND, "timeStamp": "yesterday"}).encode(), "timeStamp", id="bad-time"),
    ],
)
def test_malformed_payloads(sandbox: AzureSandbox, body: bytes, field: str | None) -> None:
    """A verified delivery that is not a usable payload raises MalformedNotification."""
    with pytest.raises(MalformedNotification) as caught:
        _parse(sandbox, body)
    assert caught.value.field == field


def test_jwt_does_not_cover_the_body(sandbox: AzureSandbox) -> None:
    """A body altered under a valid token still parses; Get Operation holds the real values."""
    sub_id = sandbox.create_customer()["resource_id"]
    change = sandbox.control("POST", f"subscriptions/{sub_id}/quantity", {"quantity": 9})
    tampered = {**change["webhook"]["payload"], "quantity": 999}

    notification = _parse(sandbox, tampered)

    # The token authenticates Microsoft, not the payload: the handler must confirm first.
    assert notification.quantity == 999 and notification.extra["confirm_with_get_operation"]
    operation = sandbox.adapter.get_operation(sub_id, notification.extra["operation_id"])
    assert operation["quantity"] == 9


# Signing keys ------------------------------------------------------------------------------------


class _CountingSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.urls.append(url)
        return super().request(method, url, *args, **kwargs)


def test_keys_are_found_through_openid_configuration_and_cached(sandbox: AzureSandbox) -> None:
    """The JWKS is discovered once through the openid-configuration and reused."""
    session = _CountingSession()
    verifier = WebhookVerifier(authority=sandbox.url, tenant_id=SANDBOX_TENANT_ID,
                               audience=SANDBOX_CLIENT_ID, session=session)
    for _ in range(3):
        verifier.verify(sandbox.token("webhook"))
    assert session.urls == [
        f"{sandbox.url}/{SANDBOX_TENANT_ID}/v2.0/.well-known/openid-configuration",
        f"{sandbox.url}/_emulator/jwks",
    ]


def test_unknown_kid_refetches_at_most_once_per_interval(sandbox: AzureSandbox) -> None:
    """Unknown key ids trigger a refetch, but no more than once per refetch interval."""
    session = _CountingSession()
    now = [0.0]
    verifier = WebhookVerifier(authority=sandbox.url, tenant_id=SANDBOX_TENANT_ID,
                               audience=SANDBOX_CLIENT_ID, session=session,
                               refetch_interval=60, clock=lambda: now[0])
    verifier.verify(sandbox.token("webhook"))
    forged = _foreign_token("rotated-kid", **sandbox.state.webhook_claims())
    for _ in range(5):
        with pytest.raises(UnverifiedNotification):
            verifier.verify(forged)
    assert len(session.urls) == 2  # only the first fetch
    now[0] = 61.0
    with pytest.raises(UnverifiedNotification):
        verifier.verify(forged)
    assert len(session.urls) == 4  # one more discovery + JWKS after the interval


def test_unfetchable_keys_are_unverified(sandbox: AzureSandbox) -> None:
    """When the signing keys cannot be fetched the notification is unverified, not a crash."""
    verifier = WebhookVerifier(authority=sandbox.url, tenant_id="unknown-tenant",
                               audience=SANDBOX_CLIENT_ID)
    with pytest.raises(UnverifiedNotification, match="signing keys"):
        verifier.verify(sandbox.token("webhook", tid="unknown-tenant"))


def test_adapter_without_verifier_refuses(sandbox: AzureSandbox) -> None:
    """An adapter built without a verifier never accepts a webhook."""
    adapter = AzureMarketplace(requests.Session(), credential=None, base_url=sandbox.url)
    with pytest.raises(UnverifiedNotification):
        adapter.parse_notification({"Authorization": f"Bearer {sandbox.token()}"}, b"{}")


# Real deliveries from the emulator ---------------------------------------------------------------


class _Receiver:
    """A tiny webhook endpoint that verifies deliveries with the adapter and keeps them."""

    def __init__(self, adapter: AzureMarketplace):
        self.received: list[ContractNotification] = []
        self.refused = 0
        app = Flask("azure-receiver")

        @app.post("/webhooks/azure")
        def receive() -> Any:
            try:
                notification = adapter.parse_notification(request.headers, request.get_data())
            except UnverifiedNotification:
                self.refused += 1
                return {"error": "unverified"}, 401
            self.received.append(notification)
            return {"ok": True}, 200

        self.server = EmulatorServer(app).start()
        self.url = f"{self.server.url}/webhooks/azure"


@pytest.fixture
def receiver(sandbox: AzureSandbox) -> Iterator[_Receiver]:
    receiver = _Receiver(sandbox.adapter)
    sandbox.control("POST", "receiver", {"url": receiver.url})
    yield receiver
    receiver.server.stop()


def _lifecycle(sandbox: AzureSandbox) -> tuple[str, list[str]]:
    created = sandbox.create_subscription(offer_id="orb-sync-demo", plan_id="payg", quantity=1)
    sub_id = created["subscription"]["id"]
    ops = [created["operation_id"]]
    for path, body in [
        ("plan", {"plan_id": "gold"}),
        ("quantity", {"quantity": 4}),
        ("suspend", None),
        ("reinstate", None),
        ("renew", None),
        ("unsubscribe", None),
    ]:
        answer = sandbox.control("POST", f"subscriptions/{sub_id}/{path}", body)
        assert answer["webhook"]["status_code"] == 200, answer["webhook"]
        ops.append(answer["operation_id"])
    return sub_id, ops


def test_emulator_webhooks_verify_and_normalize(sandbox: AzureSandbox, receiver: _Receiver) -> None:
    """Every lifecycle step sends a signed webhook that verifies and maps to its kind."""
    sub_id, ops = _lifecycle(sandbox)
    assert [n.kind for n in receiver.received] == [
        NotificationKind.CREATED, NotificationKind.MODIFIED, NotificationKind.MODIFIED,
        NotificationKind.SUSPENDED, NotificationKind.REINSTATED, NotificationKind.RENEWED,
        NotificationKind.CANCELED,
    ]
    assert [n.delivery_id for n in receiver.received] == ops
    assert {n.identifiers["subscription_id"] for n in receiver.received} == {sub_id}
    assert receiver.received[1].plan == "gold" and receiver.received[2].quantity == 4
    assert receiver.received[-1].effective_at is not None
    assert receiver.refused == 0


def test_mixed_case_deliveries_verify_and_normalize() -> None:
    """An emulator sending `Id`/`PlanId`/`Quantity` keys is understood just the same."""
    sandbox = AzureSandbox(webhook_key_style="mixed")
    receiver = _Receiver(sandbox.adapter)
    try:
        sandbox.control("POST", "receiver", {"url": receiver.url})
        created = sandbox.create_subscription(plan_id="payg", quantity=2)
        assert "Id" in created["webhook"]["payload"]
        [notification] = receiver.received
        assert notification.delivery_id == created["operation_id"]
        assert (notification.kind, notification.plan, notification.quantity) == (
            NotificationKind.CREATED, "payg", 2)
    finally:
        receiver.server.stop()
        sandbox.close()


def test_change_is_acknowledged_through_the_operations_api(
    sandbox: AzureSandbox, receiver: _Receiver
) -> None:
    """After a ChangePlan webhook the publisher's PATCH Success is recorded by the emulator."""
    sub_id = sandbox.create_customer()["resource_id"]
    sandbox.control("POST", f"subscriptions/{sub_id}/plan", {"plan_id": "gold"})
    change = receiver.received[-1]
    assert change.extra["ack_required"]
    operation = sandbox.adapter.get_operation(sub_id, change.extra["operation_id"])
    assert (operation["action"], operation["planId"]) == ("ChangePlan", "gold")
    sandbox.adapter.update_operation(sub_id, change.extra["operation_id"], "Success")
    assert sandbox.control("GET", f"operations/{change.delivery_id}")["acknowledged"] == "Success"


def test_redelivery_keeps_the_delivery_id(sandbox: AzureSandbox, receiver: _Receiver) -> None:
    """A redelivered webhook carries the same operation id, so the inbox can dedupe it."""
    created = sandbox.create_subscription()
    sandbox.control("POST", f"webhooks/{created['operation_id']}/redeliver")
    assert [n.delivery_id for n in receiver.received] == [created["operation_id"]] * 2


def test_receiver_for_another_app_refuses_deliveries(sandbox: AzureSandbox) -> None:
    """A receiver expecting another audience answers 401 and the emulator records it."""
    other = sandbox.build_adapter(client_id="another-publisher-app")
    receiver = _Receiver(other)
    try:
        sandbox.control("POST", "receiver", {"url": receiver.url})
        created = sandbox.create_subscription()
        assert created["webhook"]["status_code"] == 401 and receiver.refused == 1
        deliveries = sandbox.control("GET", "webhooks")["deliveries"]
        assert deliveries[-1]["status_code"] == 401
    finally:
        receiver.server.stop()
