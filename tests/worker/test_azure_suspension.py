"""Azure's Suspend and Reinstate webhooks end to end: the emulator signs real webhooks to a live server, the
worker applies them, and the contract's reports are held while suspended and sent once reinstated."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Iterator

import pytest
from sqlalchemy import select
from sqlmodel import Session

from tests.conftest import run_jobs
from tests.marketplaces.azure_support import AzureSandbox
from tests.worker.sync_support import ingest, setup_billing
from worker import hourly
from worker.metering import hour_floor
from worker.persistence.contracts import InboxRow
from worker.persistence.ledger import LedgerRow

OFFER = "offer-suspension"


@pytest.fixture
def sandbox() -> Iterator[AzureSandbox]:
    """Run an Azure emulator on the wall clock (the sender expires what is older than 24 hours)."""
    box = AzureSandbox(now=None)
    yield box
    box.close()


@pytest.fixture
def app(settings, redis_conn, sandbox):  # type: ignore[no-untyped-def]
    """Build the web app with its sandbox Azure adapter pointed at this test's emulator."""
    from webhooks import create_app

    application = create_app(settings.model_copy(
        update={"AZURE_EMULATOR_PORT": sandbox.server.port, "EMULATOR_HOST": "127.0.0.1"}))
    application.config["TESTING"] = True
    yield application
    application.extensions["marketsync"].close()


@pytest.fixture
def receiver(sandbox, live_server) -> str:  # type: ignore[no-untyped-def]
    """Point the emulator's webhooks at the live server."""
    url = f"{live_server.url}/webhooks/azure"
    sandbox.control("POST", "receiver", {"url": url})
    return url


def _mapped_contract(app, client, auth_headers, sandbox: AzureSandbox) -> tuple[str, str, str]:  # type: ignore[no-untyped-def]
    """Create a listing and a subscription (its Subscribe webhook maps it); return (contract, customer, subscription)."""
    setup_billing(app.extensions["marketsync"].engine)
    listing = client.post("/v1/listings", headers=auth_headers, json={
        "marketplace": "azure", "product_id": OFFER, "plan_id": "payg", "billing_plan_id": "plan_sync",
        "dimension": "usage_fee", "unit_price": "0.01"})
    assert listing.status_code == 201, listing.json
    created = sandbox.create_subscription(offer_id=OFFER, plan_id="payg", dimensions=["usage_fee"])
    assert created["webhook"]["status_code"] == 200  # stored, then acknowledged as Microsoft asks
    run_jobs(app)
    sub_id = created["subscription"]["id"]
    [contract] = client.get(f"/v1/contracts?azure_subscription_id={sub_id}", headers=auth_headers).json["results"]
    assert contract["mapping"]["status"] == "mapped", contract
    return contract["id"], contract["mapping"]["customer_id"], sub_id


def _status(client, auth_headers, contract_id: str) -> str:  # type: ignore[no-untyped-def]
    return client.get(f"/v1/contracts/{contract_id}", headers=auth_headers).json["status"]


def _rows(app, contract_id: str) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    with Session(app.extensions["marketsync"].engine) as session:
        return [(r.status, r.quantity) for r in session.execute(
            select(LedgerRow).where(LedgerRow.contract_id == contract_id).order_by(LedgerRow.hour)).scalars()]


def test_suspend_webhook_holds_reports_and_reinstate_sends_them(app, client, auth_headers, sandbox, receiver) -> None:  # type: ignore[no-untyped-def]
    """After a Suspend webhook the hourly report is written but not sent; the Reinstate webhook (answered 200)
    releases it and the drain it enqueues delivers exactly the held units."""
    contract_id, customer, sub_id = _mapped_contract(app, client, auth_headers, sandbox)
    engine = app.extensions["marketsync"].engine
    ingest(engine, customer, 5000, datetime.now(UTC))  # 5.000 at 0.01 a unit: 500 units

    suspended = sandbox.control("POST", f"subscriptions/{sub_id}/suspend")
    assert suspended["webhook"]["status_code"] == 200
    run_jobs(app)
    assert _status(client, auth_headers, contract_id) == "suspended"
    now = datetime.now(UTC)
    stamp = hour_floor(now)
    result = hourly.report_contract(engine, app.extensions["marketsync"].adapter("azure"), contract_id, stamp, now=now)
    assert (result["quantity"], result["sent"]) == (500, {})
    assert _rows(app, contract_id) == [("pending", 500)] and sandbox.usage()["events"] == []

    reinstated = sandbox.control("POST", f"subscriptions/{sub_id}/reinstate")
    assert reinstated["webhook"]["status_code"] == 200
    run_jobs(app)  # applies the Reinstate, then runs the drain it enqueued
    assert _status(client, auth_headers, contract_id) == "active"
    assert _rows(app, contract_id) == [("accepted", 500)]
    assert sandbox.usage_totals() == {(sub_id, "usage_fee", stamp.strftime("%Y-%m-%dT%H:%M:%SZ")): 500.0}


def test_a_suspend_delivered_after_its_reinstate_changes_nothing(app, client, auth_headers, sandbox, receiver) -> None:  # type: ignore[no-untyped-def]
    """Webhooks come in any order: a Suspend applied after its Reinstate follows the subscription's current
    status (Subscribed), so the contract stays active and its reports are not held."""
    contract_id, _customer, sub_id = _mapped_contract(app, client, auth_headers, sandbox)
    sandbox.control("POST", "receiver", {"url": None})  # both happen while the webhook endpoint is unreachable
    suspend = sandbox.control("POST", f"subscriptions/{sub_id}/suspend")["operation_id"]
    reinstate = sandbox.control("POST", f"subscriptions/{sub_id}/reinstate")["operation_id"]
    sandbox.control("POST", "receiver", {"url": receiver})

    answers: list[Any] = [sandbox.control("POST", f"webhooks/{op}/redeliver") for op in (reinstate, suspend)]
    assert [a["status_code"] for a in answers] == [200, 200]
    run_jobs(app)
    assert _status(client, auth_headers, contract_id) == "active"
    with Session(app.extensions["marketsync"].engine) as session:
        done = session.execute(select(InboxRow.event_type, InboxRow.status).order_by(InboxRow.id)).all()
    assert [tuple(r) for r in done] == [("Subscribe", "done"), ("Reinstate", "done"), ("Suspend", "done")]
