"""Google Cloud entitlement lifecycle end to end: the emulator sends real OIDC-signed Pub/Sub pushes
to a live server, the worker looks every event up through Procurement, approves what the listings
allow, and maps contracts to real billing-core subscriptions.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import pytest
import requests
from sqlalchemy import select
from sqlmodel import Session

from billing_core.persistence.catalog import SqlCatalog
from billing_core.persistence.subscriptions import SqlSubscriptions
from billing_core.subscriptions import Subscription
from marketplaces.emulators.gcp import SigningKey, create_gcp_emulator
from marketplaces.emulators.server import EmulatorServer
from marketplaces.gcp import SANDBOX_PROVIDER_ID, SANDBOX_SERVICE_NAME
from tests.billing_core.helpers import plan_of, unit
from tests.conftest import LiveServer, run_jobs
from worker import delivery
from worker.persistence.contracts import ContractRow, InboxRow

PRODUCT = SANDBOX_SERVICE_NAME
RECEIVER_PATH = "/webhooks/gcp/pubsub"
# Minutes into the past of the real clock: push tokens are checked against real time, while the
# billing core keeps the instants the emulator stamps on the entitlements.
T0 = (datetime.now(timezone.utc) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
T_ACTIVE = T0 + timedelta(minutes=5)
T_PLAN = T0 + timedelta(hours=2)
T_CANCEL = T0 + timedelta(hours=4)


# --- fixtures ---------------------------------------------------------------------------------

class Gcp:
    """The emulator on a loopback port: its control API and its in-process state."""

    def __init__(self, server: EmulatorServer):
        self.server = server
        self.url = server.url
        self.state = server.app.extensions["gcp_emulator"]

    def control(self, method: str, path: str, **body: Any) -> Any:
        response = requests.request(method, f"{self.url}/_emulator/{path}", json=body or None, timeout=10)
        response.raise_for_status()
        return response.json()

    def at(self, moment: datetime) -> None:
        self.control("POST", "clock", now=moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))

    def entitle(self, *, approve: bool = False, plan: str = "standard-payg") -> dict[str, str]:
        """Create an entitlement (it pushes ENTITLEMENT_CREATION_REQUESTED); return its identifiers."""
        return self.control("POST", "entitlements", plan=plan, approve=approve)["identifiers"]

    def procurement(self, entitlement_id: str, method: str, **body: Any) -> None:
        """Call the Partner Procurement API as an operator would from the Producer Portal."""
        name = f"providers/{SANDBOX_PROVIDER_ID}/entitlements/{entitlement_id}"
        requests.post(f"{self.url}/v1/{name}:{method}", json=body, timeout=10).raise_for_status()

    def entitlement(self, entitlement_id: str) -> dict[str, Any]:
        with self.state.lock:
            return dict(self.state.entitlements[entitlement_id])

    def notifications(self, event_type: str | None = None) -> list[dict[str, Any]]:
        found = self.control("GET", "notifications")["notifications"]
        return [n for n in found if event_type is None or n["event"]["eventType"] == event_type]

    def forget_delivery(self, event_id: str) -> None:
        """Mark a push as never acknowledged, so the next redelivery pushes it again."""
        with self.state.lock:
            for record in self.state.notifications:
                if record["event"]["eventId"] == event_id:
                    record["delivery"] = None

    def redeliver(self) -> int:
        return self.control("POST", "notifications/redeliver")["redelivered"]


@pytest.fixture(scope="module")
def _emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(create_gcp_emulator()) as server:
        yield server


class _LateApp:
    """A WSGI app bound after the server's port is known (the push audience names that port)."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture
def gcp(_emulator: EmulatorServer) -> Gcp:
    """Return the module's emulator, reset, its clock at T0."""
    env = Gcp(_emulator)
    env.control("POST", "reset")
    env.at(T0)
    return env


@pytest.fixture
def live_server() -> Iterator[LiveServer]:
    """Serve (once ``app`` binds it) the test app over real HTTP on a loopback port."""
    server = LiveServer(_LateApp())
    yield server
    server.stop()


@pytest.fixture
def app(settings, redis_conn, gcp, live_server):  # type: ignore[no-untyped-def]
    """Build the app on the sandbox GCP adapter of this emulator, with the live server's push audience."""
    from webhooks import create_app

    audience = live_server.url + RECEIVER_PATH
    gcp_settings = settings.model_copy(update={
        "GCP_EMULATOR_PORT": gcp.server.port, "EMULATOR_HOST": "127.0.0.1", "GCP_PUSH_AUDIENCE": audience,
    })
    application = create_app(gcp_settings)
    application.config["TESTING"] = True
    live_server.app.app = application
    gcp.control("POST", "receiver", url=audience)
    yield application
    application.extensions["marketsync"].close()


@pytest.fixture
def engine(app):  # type: ignore[no-untyped-def]
    """Return the app's database engine (billing core and sync tables)."""
    return app.extensions["marketsync"].engine


@pytest.fixture
def plans(engine) -> None:  # type: ignore[no-untyped-def]
    """Put the billing plans the listings point at into the billing core."""
    with Session(engine) as session:
        for plan_id in ("bplan_standard", "bplan_enterprise"):
            SqlCatalog(session).save_plan(plan_of(unit("0.01", id=f"{plan_id}_p", metric="m1"), id=plan_id))
        session.commit()


# --- helpers ----------------------------------------------------------------------------------

def _listing(client, auth_headers, plan: str | None, billing_plan_id: str, **extra: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = {"marketplace": "gcp", "product_id": PRODUCT, "plan_id": plan, "billing_plan_id": billing_plan_id,
            "dimension": "usage_fee", "unit_price": "0.01", **extra}
    response = client.post("/v1/listings", json=body, headers=auth_headers)
    assert response.status_code == 201, response.json
    return response.json


def _contract(client, auth_headers, entitlement_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = client.get(f"/v1/contracts?gcp_entitlement_id={entitlement_id}", headers=auth_headers)
    assert response.status_code == 200, response.json
    results = response.json["results"]
    assert len(results) == 1, results
    return client.get(f"/v1/contracts/{results[0]['id']}", headers=auth_headers).json


def _inbox(engine, *, accounts: bool = False) -> list[InboxRow]:  # type: ignore[no-untyped-def]
    """Return the stored deliveries, oldest first (entitlement events only, unless ``accounts``)."""
    with Session(engine) as s:
        rows = list(s.exec(select(InboxRow).order_by(InboxRow.id)).scalars())  # type: ignore[call-overload]
    return [r for r in rows if accounts or r.event_type.startswith("ENTITLEMENT_")]


def _subscription(engine, subscription_id: str) -> Subscription:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return SqlSubscriptions(session).get(subscription_id)


def _push(live_server: LiveServer, gcp: Gcp, token: str, event_type: str = "ENTITLEMENT_ACTIVE") -> requests.Response:
    """POST an emulator envelope the way Pub/Sub does, with the given bearer token."""
    record = gcp.notifications(event_type)[0]
    return requests.post(live_server.url + RECEIVER_PATH, data=json.dumps(record["envelope"]), timeout=10,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# --- the lifecycle ----------------------------------------------------------------------------

def test_full_lifecycle(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """A requested entitlement is approved, then mapped to a real subscription with its usageReportingId;
    an approved plan change moves the subscription's plan from then; a cancellation ends it."""
    standard = _listing(client, auth_headers, "standard-payg", "bplan_standard")
    enterprise = _listing(client, auth_headers, "enterprise-payg", "bplan_enterprise")

    ids = gcp.entitle()
    entitlement_id = ids["entitlement_id"]
    assert gcp.entitlement(entitlement_id)["state"] == "ENTITLEMENT_ACTIVATION_REQUESTED"
    gcp.at(T_ACTIVE)
    run_jobs(app)  # approves at Google; the ENTITLEMENT_ACTIVE push that follows is processed too
    assert gcp.entitlement(entitlement_id)["state"] == "ENTITLEMENT_ACTIVE"
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["status"] == "active" and contract["mapping"]["status"] == "mapped", contract["mapping"]
    assert contract["listing_id"] == standard["id"]
    assert contract["cloud_identifiers"]["usage_reporting_id"] == ids["consumer_id"]
    assert contract["cloud_identifiers"]["gcp_account_id"] == ids["account_id"]
    assert contract["cloud_identifiers"]["product_id"] == PRODUCT
    assert contract["cloud_identifiers"]["plan_id"] == "standard-payg"
    sub_id = contract["mapping"]["subscription_id"]
    sub = _subscription(engine, sub_id)
    assert sub.start == T_ACTIVE and sub.end is None and sub.external_marketplace == "gcp"
    assert sub.phase_at(T_ACTIVE).plan_id == "bplan_standard"

    gcp.at(T_PLAN - timedelta(minutes=1))
    gcp.control("POST", f"entitlements/{entitlement_id}/plan-change", plan="enterprise-payg")
    gcp.at(T_PLAN)
    run_jobs(app)  # approves the change; then the ENTITLEMENT_PLAN_CHANGED push
    assert gcp.entitlement(entitlement_id)["plan"] == "enterprise-payg"
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["listing_id"] == enterprise["id"]
    assert contract["cloud_identifiers"]["plan_id"] == "enterprise-payg"
    sub = _subscription(engine, sub_id)
    assert sub.phase_at(T_PLAN - timedelta(seconds=1)).plan_id == "bplan_standard"
    assert sub.phase_at(T_PLAN).plan_id == "bplan_enterprise"

    gcp.at(T_CANCEL)
    gcp.control("POST", f"entitlements/{entitlement_id}/cancel")
    run_jobs(app)
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["status"] == "canceled" and contract["cancel_effective_at"] == _iso(T_CANCEL)
    assert _subscription(engine, sub_id).end == T_CANCEL

    assert [(row.event_type, row.status) for row in _inbox(engine)] == [
        ("ENTITLEMENT_CREATION_REQUESTED", "ignored"), ("ENTITLEMENT_ACTIVE", "done"),
        ("ENTITLEMENT_PLAN_CHANGE_REQUESTED", "ignored"), ("ENTITLEMENT_PLAN_CHANGED", "done"),
        ("ENTITLEMENT_CANCELLED", "done"),
    ]


def test_a_commitment_is_read_with_the_entitlement(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """Through the pushes: the activation reads the entitlement's commitments (modeled, §4.11) and the
    contract includes them; a commitment changed before a plan change is read with that change."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard")
    _listing(client, auth_headers, "enterprise-payg", "bplan_enterprise")
    ids = gcp.control("POST", "entitlements", plan="standard-payg", included={"usage_fee": 1000})["identifiers"]
    entitlement_id = ids["entitlement_id"]
    gcp.at(T_ACTIVE)
    run_jobs(app)
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["mapping"]["status"] == "mapped", contract["mapping"]
    assert [(e["included"], e["source"]) for e in contract["entitlements"]] == [({"usage_fee": 1000}, "gcp")]
    gcp.control("POST", "included", contract=entitlement_id, included={"usage_fee": 3000})
    gcp.at(T_PLAN - timedelta(minutes=1))
    gcp.control("POST", f"entitlements/{entitlement_id}/plan-change", plan="enterprise-payg")
    gcp.at(T_PLAN)
    run_jobs(app)
    contract = _contract(client, auth_headers, entitlement_id)
    assert [e["included"] for e in contract["entitlements"]] == [{"usage_fee": 1000}, {"usage_fee": 3000}]


def test_plan_change_without_listing_is_rejected(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """A plan change to a plan no listing bills is rejected at Google; the contract keeps its plan."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard")
    entitlement_id = gcp.entitle(approve=True)["entitlement_id"]
    run_jobs(app)
    gcp.control("POST", f"entitlements/{entitlement_id}/plan-change", plan="platinum")
    run_jobs(app)
    entitlement = gcp.entitlement(entitlement_id)
    assert entitlement["state"] == "ENTITLEMENT_ACTIVE" and entitlement["plan"] == "standard-payg"
    assert [n["event"]["eventType"] for n in gcp.notifications()][-1] == "ENTITLEMENT_PLAN_CHANGE_CANCELLED"
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["cloud_identifiers"]["plan_id"] == "standard-payg"
    sub = _subscription(engine, contract["mapping"]["subscription_id"])
    assert [p.plan_id for p in sub.phases] == ["bplan_standard"]


@pytest.mark.parametrize("listing", [None, "manual"], ids=["no-listing", "listing-without-auto-approval"])
def test_requested_entitlement_is_left_to_the_operator(app, client, auth_headers, engine, plans, gcp, listing) -> None:  # type: ignore[no-untyped-def]
    """Without a listing that approves entitlements, the request is not approved and the contract
    shows pending and unmapped with the reason; the operator's approval then maps it from activation."""
    if listing:
        _listing(client, auth_headers, "standard-payg", "bplan_standard", approve_entitlements=False)
    entitlement_id = gcp.entitle()["entitlement_id"]
    run_jobs(app)
    assert gcp.entitlement(entitlement_id)["state"] == "ENTITLEMENT_ACTIVATION_REQUESTED"
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["status"] == "pending" and contract["mapping"]["status"] == "unmapped"
    assert "awaits approval" in contract["mapping"]["reason"]
    assert ("does not approve entitlements" if listing else f"no listing for gcp product '{PRODUCT}'") \
        in contract["mapping"]["reason"]

    gcp.at(T_ACTIVE)
    gcp.procurement(entitlement_id, "approve")
    run_jobs(app)
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["status"] == "active" and contract["started_at"] == _iso(T_ACTIVE)
    assert contract["mapping"]["status"] == ("mapped" if listing else "unmapped")
    if listing:
        assert _subscription(engine, contract["mapping"]["subscription_id"]).start == T_ACTIVE


def test_deleted_entitlement_ends_the_contract(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """ENTITLEMENT_DELETED (the GET answers 404) cancels the contract at the event's time."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard")
    gcp.at(T_ACTIVE)
    entitlement_id = gcp.entitle(approve=True)["entitlement_id"]
    run_jobs(app)
    gcp.at(T_CANCEL)
    gcp.control("DELETE", f"entitlements/{entitlement_id}")
    run_jobs(app)
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["status"] == "canceled" and contract["cancel_effective_at"] == _iso(T_CANCEL)
    assert _subscription(engine, contract["mapping"]["subscription_id"]).end == T_CANCEL
    assert [(r.event_type, r.status) for r in _inbox(engine)][-1] == ("ENTITLEMENT_DELETED", "done")


def test_cancellation_ends_at_the_end_of_a_shorter_term(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """A cancelled entitlement whose subscriptionEndTime is before its updateTime is billed until
    the subscription's end, not until Google recorded the cancellation."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard")
    gcp.at(T_ACTIVE)
    entitlement_id = gcp.entitle(approve=True)["entitlement_id"]
    run_jobs(app)
    with gcp.state.lock:
        gcp.state.entitlements[entitlement_id]["subscriptionEndTime"] = _iso(T_PLAN)
    gcp.at(T_CANCEL)
    gcp.control("POST", f"entitlements/{entitlement_id}/cancel")
    run_jobs(app)
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["cancel_effective_at"] == _iso(T_PLAN)
    assert _subscription(engine, contract["mapping"]["subscription_id"]).end == T_PLAN


# --- delivery guarantees ------------------------------------------------------------------------

def test_redelivered_push_is_stored_once(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """The same ENTITLEMENT_ACTIVE push delivered three times is stored and applied once."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard")
    entitlement_id = gcp.entitle(approve=True)["entitlement_id"]
    active = gcp.notifications("ENTITLEMENT_ACTIVE")[0]
    for _ in range(2):
        gcp.forget_delivery(active["event"]["eventId"])
        assert gcp.redeliver() == 1
    assert gcp.notifications("ENTITLEMENT_ACTIVE")[0]["attempts"] == 3
    run_jobs(app)
    rows = [r for r in _inbox(engine) if r.event_type == "ENTITLEMENT_ACTIVE"]
    assert len(rows) == 1 and rows[0].status == "done"
    assert rows[0].delivery_id == active["event"]["eventId"]
    with Session(engine) as s:
        assert len(s.exec(select(ContractRow)).scalars().all()) == 1  # type: ignore[call-overload]
    assert _contract(client, auth_headers, entitlement_id)["mapping"]["status"] == "mapped"


def test_cancel_before_activation_converges(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """A cancellation processed before the activation waits; the activation then creates the contract
    from its activation time and the cancellation ends the subscription at its cancellation time."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard")
    gcp.control("POST", "receiver", url="")  # Pub/Sub cannot reach us yet
    gcp.at(T_ACTIVE)
    entitlement_id = gcp.entitle(approve=True)["entitlement_id"]
    gcp.control("POST", "receiver", url=app.extensions["marketsync"].settings.GCP_PUSH_AUDIENCE)
    gcp.at(T_CANCEL)
    gcp.control("POST", f"entitlements/{entitlement_id}/cancel")
    run_jobs(app)
    assert [(r.event_type, r.status) for r in _inbox(engine)] == [("ENTITLEMENT_CANCELLED", "deferred")]

    assert gcp.redeliver() == 3  # the account, the creation request and the activation, late
    run_jobs(app)
    assert {r.event_type: r.status for r in _inbox(engine)} == {
        "ENTITLEMENT_CANCELLED": "done", "ENTITLEMENT_CREATION_REQUESTED": "done", "ENTITLEMENT_ACTIVE": "done"}
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["status"] == "canceled" and contract["mapping"]["status"] == "mapped"
    sub = _subscription(engine, contract["mapping"]["subscription_id"])
    assert (sub.start, sub.end) == (T_ACTIVE, T_CANCEL)


def test_held_entitlement_canceled_before_its_late_activation(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """A held request the operator approved, then cancelled before the activation push arrived, is
    billed from activation to cancellation only."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard", approve_entitlements=False)
    entitlement_id = gcp.entitle()["entitlement_id"]
    run_jobs(app)
    audience = app.extensions["marketsync"].settings.GCP_PUSH_AUDIENCE
    gcp.control("POST", "receiver", url="")  # the activation push is delayed
    gcp.at(T_ACTIVE)
    gcp.procurement(entitlement_id, "approve")
    gcp.control("POST", "receiver", url=audience)
    gcp.at(T_CANCEL)
    gcp.control("POST", f"entitlements/{entitlement_id}/cancel")
    run_jobs(app)
    assert _contract(client, auth_headers, entitlement_id)["status"] == "canceled"

    assert gcp.redeliver() == 1
    run_jobs(app)
    contract = _contract(client, auth_headers, entitlement_id)
    assert contract["status"] == "canceled" and contract["mapping"]["status"] == "mapped"
    sub = _subscription(engine, contract["mapping"]["subscription_id"])
    assert (sub.start, sub.end) == (T_ACTIVE, T_CANCEL)


def test_unknown_listing_then_mapping_by_patch(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """An entitlement approved by hand for a product without listing stays unmapped until an
    operator attaches a subscription with PATCH /v1/contracts/{id}."""
    ids = gcp.entitle(approve=True)
    run_jobs(app)
    contract = _contract(client, auth_headers, ids["entitlement_id"])
    assert contract["status"] == "active" and contract["mapping"]["status"] == "unmapped"
    assert f"no listing for gcp product '{PRODUCT}' plan 'standard-payg'" in contract["mapping"]["reason"]

    billing = app.extensions["marketsync"].billing_gateway()
    customer = billing.ensure_customer(external_customer_id=f"gcp:{ids['account_id']}", name="Buyer",
                                       email="", currency="USD")
    sub_id = billing.create_subscription(idempotency_key="by-hand", customer_id=customer, plan_id="bplan_standard",
                                         start=T0, external_marketplace="gcp", reporting_id="by-hand")
    body = {"external_associations": {"billing": {"mapped_object": {"id": sub_id}}}}
    response = client.patch(f"/v1/contracts/{contract['id']}", json=body, headers=auth_headers)
    assert response.status_code == 200, response.json
    assert response.json["mapping"] == {"status": "mapped", "reason": None, "customer_id": customer,
                                        "subscription_id": sub_id}


def test_missing_usage_reporting_id_is_fetched_again(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """An activation whose entitlement has no usageReportingId yet fails for a retry, which maps it
    once Google has assigned one."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard")
    ids = gcp.entitle(approve=True)
    with gcp.state.lock:
        gcp.state.entitlements[ids["entitlement_id"]].pop("usageReportingId")
    run_jobs(app)
    active = next(r for r in _inbox(engine) if r.event_type == "ENTITLEMENT_ACTIVE")
    assert active.status == "failed" and "usageReportingId" in active.error
    with Session(engine) as s:
        assert s.exec(select(ContractRow)).scalars().all() == []  # type: ignore[call-overload]

    with gcp.state.lock:
        gcp.state.entitlements[ids["entitlement_id"]]["usageReportingId"] = ids["consumer_id"]
    runtime = app.extensions["marketsync"]
    assert delivery.process(runtime, active.id, now=datetime.now(timezone.utc)) == "done"  # the retry
    contract = _contract(client, auth_headers, ids["entitlement_id"])
    assert contract["mapping"]["status"] == "mapped"
    assert contract["cloud_identifiers"]["usage_reporting_id"] == ids["consumer_id"]


def test_procurement_outage_is_retried(app, client, auth_headers, engine, plans, gcp) -> None:  # type: ignore[no-untyped-def]
    """When Procurement is down the delivery fails for a retry (nothing applied), and the retry applies it."""
    _listing(client, auth_headers, "standard-payg", "bplan_standard")
    ids = gcp.entitle(approve=True)
    gcp.control("POST", "faults", outage=True)
    run_jobs(app)
    assert {r.status for r in _inbox(engine)} == {"failed"}
    assert all("TransientMarketplaceError" in r.error for r in _inbox(engine))
    gcp.control("POST", "faults", outage=False)
    runtime = app.extensions["marketsync"]
    for row in _inbox(engine):
        delivery.process(runtime, row.id, now=datetime.now(timezone.utc))
    assert _contract(client, auth_headers, ids["entitlement_id"])["mapping"]["status"] == "mapped"


# --- authentication -----------------------------------------------------------------------------

@pytest.mark.parametrize("forge", ["wrong-audience", "foreign-key"])
def test_bad_push_token_is_401_and_stored_nowhere(app, engine, gcp, live_server, forge) -> None:  # type: ignore[no-untyped-def]
    """A push whose token names another audience, or is signed by a key Google does not publish,
    is refused with 401 and nothing is stored."""
    gcp.control("POST", "receiver", url="")
    gcp.entitle(approve=True)
    audience = live_server.url + RECEIVER_PATH
    if forge == "wrong-audience":
        token = gcp.state.mint_push_token(audience="https://elsewhere.example" + RECEIVER_PATH)
    else:
        token = gcp.state.mint_push_token(audience=audience, key=SigningKey.generate())
    response = _push(live_server, gcp, token)
    assert response.status_code == 401, response.text
    assert _inbox(engine, accounts=True) == []
    good = _push(live_server, gcp, gcp.state.mint_push_token(audience=audience))
    assert good.status_code == 202, good.text
