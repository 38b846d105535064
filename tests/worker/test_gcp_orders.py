"""Google: one account holding two orders (entitlements) of one product, end to end through Pub/Sub pushes,
Procurement and Service Control (the emulator and the real clients)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from billing_core import SqlCustomerRepository
from marketplaces.base import Marketplace, UsageRecord
from marketplaces.gcp import operation_id_for
from tests.conftest import run_jobs
# The Google lifecycle harness: the emulator, the live server its pushes reach, and the app on its adapter.
from tests.integration.test_gcp_lifecycle import (  # noqa: F401 - fixtures
    PRODUCT, T0, Gcp, _emulator, app, engine, gcp, live_server,
)
from tests.worker.sync_support import ingest, setup_billing
from worker import hourly


def _contract(client, auth_headers, entitlement_id: str) -> dict:  # type: ignore[no-untyped-def]
    [found] = client.get(f"/v1/contracts?gcp_entitlement_id={entitlement_id}", headers=auth_headers).json["results"]
    return found


def test_two_orders_of_one_product_for_one_account_are_kept_apart(app, client, auth_headers, engine, gcp: Gcp) -> None:  # type: ignore[no-untyped-def]
    """Two entitlements of one product bought by one account become two contracts (keyed by entitlement id), two
    billing customers and subscriptions, and two reports per hour, each checked then reported to its own
    consumer under its own operationId: each order is billed its own usage, exactly."""
    setup_billing(engine, plan_id="bplan_standard")
    listing = client.post("/v1/listings", headers=auth_headers, json={
        "marketplace": "gcp", "product_id": PRODUCT, "plan_id": "standard-payg", "billing_plan_id": "bplan_standard",
        "dimension": "usage_fee", "unit_price": "0.01"})
    assert listing.status_code == 201, listing.json
    first = gcp.control("POST", "entitlements", plan="standard-payg")["identifiers"]
    second = gcp.control("POST", "entitlements", plan="standard-payg", account_id=first["account_id"])["identifiers"]
    assert first["account_id"] == second["account_id"] and first["entitlement_id"] != second["entitlement_id"]
    gcp.at(T0 + timedelta(minutes=5))
    run_jobs(app)  # both approved at Google; their ENTITLEMENT_ACTIVE pushes map them

    a, b = (_contract(client, auth_headers, ids["entitlement_id"]) for ids in (first, second))
    assert (a["status"], a["mapping"]["status"], b["status"], b["mapping"]["status"]) == (
        "active", "mapped", "active", "mapped")
    assert (a["external_id"], b["external_id"]) == (first["entitlement_id"], second["entitlement_id"])
    assert a["cloud_identifiers"]["gcp_account_id"] == b["cloud_identifiers"]["gcp_account_id"] == first["account_id"]
    assert a["mapping"]["subscription_id"] != b["mapping"]["subscription_id"]
    with Session(engine) as session:
        customers = SqlCustomerRepository(session)
        assert [customers.get(c["mapping"]["customer_id"]).external_customer_id for c in (a, b)] == [
            f"gcp:{first['entitlement_id']}", f"gcp:{second['entitlement_id']}"]

    ingest(engine, a["mapping"]["customer_id"], 5000, T0 + timedelta(minutes=30))  # 500 units
    ingest(engine, b["mapping"]["customer_id"], 3000, T0 + timedelta(minutes=30))  # 300 units
    adapter = app.extensions["marketsync"].adapter("gcp")
    now = datetime.now(UTC)
    for contract in (a, b):
        assert hourly.report_contract(engine, adapter, contract["id"], T0, now=now)["sent"] == {"accepted": 1}

    usage = gcp.control("GET", "usage")
    assert {t["consumer_id"]: t["quantity"] for t in usage["totals"]} == {
        first["consumer_id"]: 500, second["consumer_id"]: 300}
    expected = [operation_id_for(UsageRecord(key="k", marketplace=Marketplace.GCP, dimension="usage_fee", hour=T0,
                                             quantity=1, identifiers={"entitlement_id": ids["entitlement_id"]}))
                for ids in (first, second)]
    assert [op["operation"]["operationId"] for op in usage["operations"]] == expected
    assert [(c["operationId"], c["passed"]) for c in usage["checks"]] == [(op_id, True) for op_id in expected]
