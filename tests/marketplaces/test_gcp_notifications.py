"""Pub/Sub push verification and normalization for Google Cloud Marketplace procurement events."""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
import requests
import responses
from flask import Flask, request

from config.settings import Settings
from marketplaces.base import (
    ContractNotification,
    Marketplace,
    MalformedNotification,
    NotificationKind,
    UnverifiedNotification,
)
from marketplaces.emulators.gcp import SigningKey, create_gcp_emulator
from marketplaces.emulators.server import EmulatorServer
from marketplaces.gcp import (
    SANDBOX_PUSH_SERVICE_ACCOUNT,
    GcpMarketplace,
    PushTokenVerifier,
    build_gcp_adapter,
)

AUDIENCE = "https://sync.acme.example/gcp/pubsub"
PROVIDER = "acme-saas-public"
ENTITLEMENT = "0f4b7a2c-8e1d-4c55-9a7e-1b2c3d4e5f60"
ACCOUNT = "eda2a6ce-2e2d-44ff-985f-37e6c51af7d1"

# docs/marketplaces.md §4.10, verbatim
VECTORS = {
    "creation-requested": {"eventId": "CREATION_REQUESTED-4f1e2d3c-b4a5-4968-8778-695a4b3c2d1e", "eventType": "ENTITLEMENT_CREATION_REQUESTED", "providerId": "acme-saas-public", "entitlement": {"id": "0f4b7a2c-8e1d-4c55-9a7e-1b2c3d4e5f60", "updateTime": "2026-11-21T09:02:11.275760Z"}},
    "active": {"eventId": "ACTIVE-5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d", "eventType": "ENTITLEMENT_ACTIVE", "providerId": "acme-saas-public", "entitlement": {"id": "0f4b7a2c-8e1d-4c55-9a7e-1b2c3d4e5f60", "updateTime": "2026-11-21T09:03:40.104512Z"}},
    "plan-change-requested": {"eventId": "PLAN_CHANGE_REQUESTED-6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d9e", "eventType": "ENTITLEMENT_PLAN_CHANGE_REQUESTED", "providerId": "acme-saas-public", "entitlement": {"id": "0f4b7a2c-8e1d-4c55-9a7e-1b2c3d4e5f60", "newPlan": "enterprise-payg", "updateTime": "2026-11-21T12:30:00.000000Z"}},
    "plan-changed": {"eventId": "PLAN_CHANGED-7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f", "eventType": "ENTITLEMENT_PLAN_CHANGED", "providerId": "acme-saas-public", "entitlement": {"id": "0f4b7a2c-8e1d-4c55-9a7e-1b2c3d4e5f60", "newPlan": "enterprise-payg", "updateTime": "2026-11-21T12:31:05.000000Z"}},
    "pending-cancellation": {"eventId": "PENDING_CANCELLATION-8d9e0f1a-2b3c-4d4e-9f5a-6b7c8d9e0f1a", "eventType": "ENTITLEMENT_PENDING_CANCELLATION", "providerId": "acme-saas-public", "entitlement": {"id": "0f4b7a2c-8e1d-4c55-9a7e-1b2c3d4e5f60", "updateTime": "2026-11-21T14:00:00.000000Z"}},
    "cancelled": {"eventId": "CANCELLED-9e0f1a2b-3c4d-4e5f-8a6b-7c8d9e0f1a2b", "eventType": "ENTITLEMENT_CANCELLED", "providerId": "acme-saas-public", "entitlement": {"id": "0f4b7a2c-8e1d-4c55-9a7e-1b2c3d4e5f60", "updateTime": "2026-11-30T23:59:59.000000Z"}},
    "deleted": {"eventId": "DELETED-0f1a2b3c-4d5e-4f6a-9b7c-8d9e0f1a2b3c", "eventType": "ENTITLEMENT_DELETED", "providerId": "acme-saas-public", "entitlement": {"id": "0f4b7a2c-8e1d-4c55-9a7e-1b2c3d4e5f60", "updateTime": "2026-12-01T00:10:00.000000Z"}},
    "account-active": {"eventId": "ACCOUNT_ACTIVE-1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "eventType": "ACCOUNT_ACTIVE", "providerId": "acme-saas-public", "account": {"id": "eda2a6ce-2e2d-44ff-985f-37e6c51af7d1", "updateTime": "2026-11-21T09:01:02.000000Z"}},
    "account-deleted": {"eventId": "ACCOUNT_DELETED-2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e", "eventType": "ACCOUNT_DELETED", "providerId": "acme-saas-public", "account": {"id": "eda2a6ce-2e2d-44ff-985f-37e6c51af7d1", "updateTime": "2026-12-02T08:00:00.000000Z"}},
}
VECTOR_ENVELOPE = {
    "message": {
        "attributes": {},
        "data": "eyJldmVudElkIjogIkFDVElWRS01YTZiN2M4ZC05ZTBmLTRhMWItOGMyZC0zZTRmNWE2YjdjOGQiLCAiZXZlbnRUeXBlIjogIkVOVElUTEVNRU5UX0FDVElWRSIsICJwcm92aWRlcklkIjogImFjbWUtc2Fhcy1wdWJsaWMiLCAiZW50aXRsZW1lbnQiOiB7ImlkIjogIjBmNGI3YTJjLThlMWQtNGM1NS05YTdlLTFiMmMzZDRlNWY2MCIsICJ1cGRhdGVUaW1lIjogIjIwMjYtMTEtMjFUMDk6MDM6NDAuMTA0NTEyWiJ9fQ==",
        "messageId": "13579246801357924",
        "message_id": "13579246801357924",
        "publishTime": "2026-11-21T09:03:41.220Z",
        "publish_time": "2026-11-21T09:03:41.220Z",
    },
    "subscription": "projects/acme-prod/subscriptions/marketplace-procurement-push",
}
ENT_IDS = {"provider_id": PROVIDER, "entitlement_id": ENTITLEMENT}
ACC_IDS = {"provider_id": PROVIDER, "account_id": ACCOUNT}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    """Serve one emulator whose push tokens name AUDIENCE; its certs URL is the trust root."""
    with EmulatorServer(create_gcp_emulator(provider_id=PROVIDER, audience=AUDIENCE)) as server:
        yield server


@pytest.fixture(scope="module")
def state(emulator: EmulatorServer) -> Any:
    """Return the emulator's state (its signing key and envelope builder)."""
    return emulator.app.extensions["gcp_emulator"]


@pytest.fixture(scope="module")
def adapter(emulator: EmulatorServer) -> GcpMarketplace:
    """Return a sandbox adapter trusting the emulator's certs, expecting AUDIENCE."""
    settings = Settings.from_env({
        "GCP_EMULATOR_PORT": str(emulator.port),
        "GCP_PUSH_AUDIENCE": AUDIENCE,
        "GCP_PROVIDER_ID": PROVIDER,
    })
    return build_gcp_adapter(settings)


def push(state: Any, event: dict[str, Any], token: str | None = None) -> tuple[dict[str, str], bytes]:
    """Return headers and body of a signed push carrying ``event``."""
    with state.lock:
        envelope = state.envelope(event)
    headers = {"Content-Type": "application/json",
               "Authorization": f"Bearer {token or state.mint_push_token()}"}
    return headers, json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("name", "kind", "identifiers", "plan", "extra", "effective_at"),
    [
        pytest.param("creation-requested", NotificationKind.PENDING, ENT_IDS, None,
                     {"approval": "entitlement"}, utc("2026-11-21T09:02:11.275760"), id="creation-requested"),
        pytest.param("active", NotificationKind.CREATED, ENT_IDS, None, {},
                     utc("2026-11-21T09:03:40.104512"), id="active"),
        pytest.param("plan-change-requested", NotificationKind.PENDING, ENT_IDS, None,
                     {"approval": "plan_change", "new_plan": "enterprise-payg"},
                     utc("2026-11-21T12:30:00"), id="plan-change-requested"),
        pytest.param("plan-changed", NotificationKind.MODIFIED, ENT_IDS, "enterprise-payg",
                     {"new_plan": "enterprise-payg"}, utc("2026-11-21T12:31:05"), id="plan-changed"),
        pytest.param("pending-cancellation", NotificationKind.IGNORED, ENT_IDS, None, {},
                     utc("2026-11-21T14:00:00"), id="pending-cancellation"),
        pytest.param("cancelled", NotificationKind.CANCELED, ENT_IDS, None, {},
                     utc("2026-11-30T23:59:59"), id="cancelled"),
        pytest.param("deleted", NotificationKind.IGNORED, ENT_IDS, None, {},
                     utc("2026-12-01T00:10:00"), id="deleted"),
        pytest.param("account-active", NotificationKind.IGNORED, ACC_IDS, None, {},
                     utc("2026-11-21T09:01:02"), id="account-active"),
        pytest.param("account-deleted", NotificationKind.IGNORED, ACC_IDS, None, {},
                     utc("2026-12-02T08:00:00"), id="account-deleted"),
    ],
)
def test_reference_vectors_parse(
    adapter: GcpMarketplace, state: Any, name: str, kind: NotificationKind,
    identifiers: dict[str, str], plan: str | None, extra: dict[str, Any], effective_at: datetime,
) -> None:
    """Each §7.3 payload, pushed and signed, normalizes to its kind, ids, plan and time."""
    event = VECTORS[name]
    note = adapter.parse_notification(*push(state, event))
    assert (note.marketplace, note.delivery_id, note.kind, note.action) == (
        Marketplace.GCP, event["eventId"], kind, event["eventType"])
    assert dict(note.identifiers) == identifiers
    assert note.plan == plan
    assert note.effective_at == effective_at
    assert extra.items() <= dict(note.extra).items()
    assert note.extra["event_type"] == event["eventType"]
    assert note.extra["pushed_by"] == SANDBOX_PUSH_SERVICE_ACCOUNT


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        pytest.param("ENTITLEMENT_OFFER_ACCEPTED", NotificationKind.CREATED, id="offer-accepted"),
        pytest.param("ENTITLEMENT_CANCELLING", NotificationKind.CANCELED, id="cancelling"),
        pytest.param("ENTITLEMENT_RENEWED", NotificationKind.RENEWED, id="renewed"),
        pytest.param("ENTITLEMENT_CANCELLATION_REVERTED", NotificationKind.IGNORED, id="reverted"),
        pytest.param("ENTITLEMENT_PLAN_CHANGE_CANCELLED", NotificationKind.IGNORED, id="plan-change-cancelled"),
        pytest.param("ENTITLEMENT_OFFER_ENDED", NotificationKind.IGNORED, id="offer-ended"),
        pytest.param("SOMETHING_NEW", NotificationKind.IGNORED, id="unknown-type"),
    ],
)
def test_other_event_types_map_to_kinds(
    adapter: GcpMarketplace, state: Any, event_type: str, kind: NotificationKind
) -> None:
    """The event types without a §7.3 vector map to their kind, keeping the action."""
    event = {"eventId": f"E-{event_type}", "eventType": event_type, "providerId": PROVIDER,
             "entitlement": {"id": ENTITLEMENT, "updateTime": "2026-11-21T10:00:00Z"}}
    note = adapter.parse_notification(*push(state, event))
    assert (note.kind, note.action, note.delivery_id) == (kind, event_type, f"E-{event_type}")


def test_reference_envelope_base64_decodes(adapter: GcpMarketplace, state: Any) -> None:
    """The §7.3 push envelope's data is the ENTITLEMENT_ACTIVE payload and parses as one."""
    assert json.loads(base64.b64decode(VECTOR_ENVELOPE["message"]["data"])) == VECTORS["active"]
    headers = {"authorization": f"Bearer {state.mint_push_token()}"}
    note = adapter.parse_notification(headers, json.dumps(VECTOR_ENVELOPE).encode())
    assert (note.kind, note.delivery_id) == (NotificationKind.CREATED, VECTORS["active"]["eventId"])
    assert note.extra["message_id"] == "13579246801357924"
    assert note.extra["subscription"] == VECTOR_ENVELOPE["subscription"]


def test_delivery_id_falls_back_to_message_id(adapter: GcpMarketplace, state: Any) -> None:
    """Without an eventId the Pub/Sub messageId is the dedupe key."""
    event = {k: v for k, v in VECTORS["active"].items() if k != "eventId"}
    headers, body = push(state, event)
    note = adapter.parse_notification(headers, body)
    assert note.delivery_id == json.loads(body)["message"]["messageId"]


FOREIGN_KEY = SigningKey.generate()


@pytest.mark.parametrize(
    "make_headers",
    [
        pytest.param(lambda s: {}, id="missing-header"),
        pytest.param(lambda s: {"Authorization": "Bearer"}, id="empty-bearer"),
        pytest.param(lambda s: {"Authorization": f"Basic {s.mint_push_token()}"}, id="not-bearer"),
        pytest.param(lambda s: {"Authorization": "Bearer not.a.jwt"}, id="garbage"),
        pytest.param(lambda s: {"Authorization": "Bearer " + s.mint_push_token(
            issued_at=time.time() - 7200)}, id="expired"),
        pytest.param(lambda s: {"Authorization": "Bearer " + s.mint_push_token(
            audience="https://elsewhere.example/push")}, id="wrong-audience"),
        pytest.param(lambda s: {"Authorization": "Bearer " + s.mint_push_token(
            email="intruder@evil.iam.gserviceaccount.com")}, id="wrong-email"),
        pytest.param(lambda s: {"Authorization": "Bearer " + s.mint_push_token(
            email_verified=False)}, id="email-not-verified"),
        pytest.param(lambda s: {"Authorization": "Bearer " + s.mint_push_token(
            iss="https://evil.example")}, id="wrong-issuer"),
        pytest.param(lambda s: {"Authorization": "Bearer " + s.mint_push_token(
            key=FOREIGN_KEY)}, id="foreign-key"),
        pytest.param(lambda s: {"Authorization": "Bearer " + s.mint_push_token(
            key=SigningKey(s.signing_key.kid, FOREIGN_KEY.private_pem, ""))}, id="foreign-key-same-kid"),
    ],
)
def test_bad_tokens_are_unverified(adapter: GcpMarketplace, state: Any, make_headers: Any) -> None:
    """Any token that is missing, expired, mis-addressed or not signed by the trusted key is refused."""
    _, body = push(state, VECTORS["active"])
    with pytest.raises(UnverifiedNotification):
        adapter.parse_notification(make_headers(state), body)


def test_adapter_without_audience_refuses_every_push(emulator: EmulatorServer, state: Any) -> None:
    """An adapter with no configured audience fails closed instead of skipping the aud check."""
    settings = Settings.from_env({"GCP_EMULATOR_PORT": str(emulator.port)})
    with pytest.raises(UnverifiedNotification, match="audience"):
        build_gcp_adapter(settings).parse_notification(*push(state, VECTORS["active"]))


def _b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b"not json", "body", id="body-not-json"),
        pytest.param(b"[1, 2]", "body", id="body-not-object"),
        pytest.param(json.dumps({"subscription": "x"}).encode(), "message", id="no-message"),
        pytest.param(json.dumps({"message": {"messageId": "1"}}).encode(), "message.data", id="no-data"),
        pytest.param(json.dumps({"message": {"data": "%%%not-base64%%%"}}).encode(), "message.data", id="bad-base64"),
        pytest.param(json.dumps({"message": {"data": _b64(b"{nope")}}).encode(), "message.data", id="data-not-json"),
        pytest.param(json.dumps({"message": {"data": _b64({"eventId": "x", "entitlement": {"id": "e"}})}}).encode(),
                     "eventType", id="missing-event-type"),
        pytest.param(json.dumps({"message": {"data": _b64({"eventId": "x", "eventType": "ENTITLEMENT_ACTIVE"})}}).encode(),
                     "entitlement", id="no-subject"),
        pytest.param(json.dumps({"message": {"data": _b64({"eventId": "x", "eventType": "ENTITLEMENT_ACTIVE",
                                                            "entitlement": {}})}}).encode(),
                     "entitlement.id", id="no-entitlement-id"),
        pytest.param(json.dumps({"message": {"data": _b64({**VECTORS["active"], "providerId": "someone-else"})}}).encode(),
                     "providerId", id="other-provider"),
    ],
)
def test_malformed_pushes_name_the_field(adapter: GcpMarketplace, state: Any, body: bytes, field: str) -> None:
    """A verified push with a broken envelope or payload is malformed, naming what is wrong."""
    headers = {"Authorization": f"Bearer {state.mint_push_token()}"}
    with pytest.raises(MalformedNotification) as caught:
        adapter.parse_notification(headers, body)
    assert caught.value.field == field


def test_unverified_wins_over_malformed(adapter: GcpMarketplace) -> None:
    """A broken body without a valid token is refused as unverified (401), not parsed."""
    with pytest.raises(UnverifiedNotification):
        adapter.parse_notification({}, b"not json")


@responses.activate
def test_live_verifier_checks_google_certs(state: Any) -> None:
    """The live path verifies against Google's published certificates (served here by a stub)."""
    responses.add(
        responses.GET, "https://www.googleapis.com/oauth2/v1/certs",
        json={state.signing_key.kid: state.signing_key.certificate_pem},
    )
    verifier = PushTokenVerifier(audience=AUDIENCE, service_account=SANDBOX_PUSH_SERVICE_ACCOUNT,
                                 http=requests.Session())
    claims = verifier(f"Bearer {state.mint_push_token()}")
    assert claims["email"] == SANDBOX_PUSH_SERVICE_ACCOUNT
    with pytest.raises(UnverifiedNotification):
        verifier(f"Bearer {state.mint_push_token(audience='https://elsewhere.example')}")


# --- real pushes from the emulator ---------------------------------------------------------


class Receiver:
    """A tiny push endpoint that verifies each delivery with the adapter and keeps the result."""

    def __init__(self) -> None:
        self.adapter: GcpMarketplace | None = None
        self.received: list[ContractNotification] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()
        self.app = Flask("gcp_push_receiver")
        self.app.add_url_rule("/gcp/pubsub", "push", self.push, methods=["POST"])

    def push(self) -> tuple[str, int]:
        assert self.adapter is not None
        try:
            note = self.adapter.parse_notification(dict(request.headers), request.get_data())
        except UnverifiedNotification as exc:
            with self.lock:
                self.refused.append(str(exc))
            return "", 401
        with self.lock:
            self.received.append(note)
        return "", 204


@pytest.fixture
def live_pair() -> Iterator[tuple[Receiver, EmulatorServer, str]]:
    """Return a receiver, an emulator pushing to it, and the receiver URL (the audience)."""
    receiver = Receiver()
    with EmulatorServer(receiver.app) as receiver_server:
        url = receiver_server.url + "/gcp/pubsub"
        with EmulatorServer(create_gcp_emulator(receiver_url=url)) as emulator:
            yield receiver, emulator, url


def test_emulator_sends_real_verified_pushes(live_pair: tuple[Receiver, EmulatorServer, str]) -> None:
    """Lifecycle steps make the emulator push signed envelopes that the adapter verifies in order."""
    receiver, emulator, url = live_pair
    settings = Settings.from_env({"GCP_EMULATOR_PORT": str(emulator.port), "GCP_PUSH_AUDIENCE": url})
    adapter = receiver.adapter = build_gcp_adapter(settings)
    base = emulator.url + "/_emulator"
    created = requests.post(base + "/entitlements", json={"plan": "standard-payg"}, timeout=10).json()
    eid = created["identifiers"]["entitlement_id"]
    adapter.approve_entitlement(eid)
    requests.post(f"{base}/entitlements/{eid}/plan-change", json={"plan": "enterprise-payg"}, timeout=10)
    adapter.approve_plan_change(eid, "enterprise-payg")
    requests.post(f"{base}/entitlements/{eid}/cancel", json={}, timeout=10)

    assert receiver.refused == []
    assert [(n.action, n.kind) for n in receiver.received] == [
        ("ACCOUNT_ACTIVE", NotificationKind.IGNORED),
        ("ENTITLEMENT_CREATION_REQUESTED", NotificationKind.PENDING),
        ("ENTITLEMENT_ACTIVE", NotificationKind.CREATED),
        ("ENTITLEMENT_PLAN_CHANGE_REQUESTED", NotificationKind.PENDING),
        ("ENTITLEMENT_PLAN_CHANGED", NotificationKind.MODIFIED),
        ("ENTITLEMENT_CANCELLED", NotificationKind.CANCELED),
    ]
    assert all(n.identifiers.get("entitlement_id") == eid for n in receiver.received[1:])
    assert receiver.received[4].plan == "enterprise-payg"
    assert len({n.delivery_id for n in receiver.received}) == 6
    log = requests.get(base + "/notifications", timeout=10).json()["notifications"]
    assert [entry["delivery"]["status"] for entry in log] == [204] * 6


def test_push_for_another_service_account_is_refused(live_pair: tuple[Receiver, EmulatorServer, str]) -> None:
    """A receiver expecting a different push service account answers 401 to the emulator's push."""
    receiver, emulator, url = live_pair
    settings = Settings.from_env({
        "GCP_EMULATOR_PORT": str(emulator.port), "GCP_PUSH_AUDIENCE": url,
        "GCP_PUSH_SERVICE_ACCOUNT": "someone-else@acme-prod.iam.gserviceaccount.com",
    })
    receiver.adapter = build_gcp_adapter(settings)
    requests.post(emulator.url + "/_emulator/accounts", json={}, timeout=10)
    log = requests.get(emulator.url + "/_emulator/notifications", timeout=10).json()["notifications"]
    assert [entry["delivery"]["status"] for entry in log] == [401]
    assert receiver.received == [] and "email" in receiver.refused[0]


def test_unacknowledged_push_is_redelivered(live_pair: tuple[Receiver, EmulatorServer, str]) -> None:
    """A push answered 401 is pushed again on redeliver, with a fresh token, and then acknowledged."""
    receiver, emulator, url = live_pair
    base = {"GCP_EMULATOR_PORT": str(emulator.port), "GCP_PUSH_AUDIENCE": url}
    receiver.adapter = build_gcp_adapter(Settings.from_env(
        {**base, "GCP_PUSH_SERVICE_ACCOUNT": "someone-else@acme-prod.iam.gserviceaccount.com"}))
    requests.post(emulator.url + "/_emulator/accounts", json={}, timeout=10)
    receiver.adapter = build_gcp_adapter(Settings.from_env(base))

    answer = requests.post(emulator.url + "/_emulator/notifications/redeliver", timeout=10).json()

    assert answer == {"redelivered": 1}
    [entry] = requests.get(emulator.url + "/_emulator/notifications", timeout=10).json()["notifications"]
    assert (entry["delivery"]["status"], entry["attempts"]) == (204, 2)
    assert [n.action for n in receiver.received] == ["ACCOUNT_ACTIVE"]
