"""AWS Concurrent Agreements: one buyer account holding two agreements (licenses) of one product, end to end
through EventBridge, GetEntitlements and BatchMeterUsage (the AWS emulator and the real boto3 clients)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session

from billing_core import SqlCustomerRepository
from marketplaces.aws import license_id
from marketplaces.emulators.aws import AwsEmulatorClient
from tests.conftest import run_jobs
# The AWS lifecycle harness: the emulator, its control client wired to the live server, the app on its adapter.
from tests.integration.test_aws_lifecycle import (  # noqa: F401 - fixtures
    AUTH, PRODUCT, aws, emulator, engine, settings,
)
from tests.worker.sync_support import ingest, setup_billing
from worker import hourly
from worker.metering import hour_floor

ACCOUNT = "123456789012"


def test_two_agreements_on_one_account_are_billed_apart(app, live_server, engine, aws: AwsEmulatorClient) -> None:  # type: ignore[no-untyped-def]
    """Two licenses of one product bought by one account become two contracts keyed by license, two billing
    customers (``aws:<license id>``) and two subscriptions; each agreement is reported its own usage, exactly,
    under its own LicenseArn and without ProductCode."""
    setup_billing(engine, plan_id="plan_agreements")
    listing = app.test_client().post("/v1/listings", headers=AUTH, json={
        "marketplace": "aws", "product_id": PRODUCT, "billing_plan_id": "plan_agreements",
        "dimension": "usage_fee", "unit_price": "0.01", "aws_concurrent_agreements": True})
    assert listing.status_code == 201, listing.json
    first, second = (aws.create_customer(product_code=PRODUCT, customer_aws_account_id=ACCOUNT, legacy_identifier=False,
                                         notify="eventbridge") for _ in range(2))
    assert first["identifiers"]["license_arn"] != second["identifiers"]["license_arn"]
    run_jobs(app)

    contracts = []
    for created in (first, second):
        found = app.test_client().get("/v1/contracts", headers=AUTH,
                                      query_string={"license_arn": created["identifiers"]["license_arn"]}).json["results"]
        assert len(found) == 1, found
        contracts.append(found[0])
    a, b = contracts
    assert (a["external_id"], b["external_id"]) == (first["id"], second["id"])
    assert a["cloud_identifiers"]["customer_aws_account_id"] == b["cloud_identifiers"]["customer_aws_account_id"] == ACCOUNT
    assert (a["mapping"]["status"], b["mapping"]["status"]) == ("mapped", "mapped")
    assert a["mapping"]["customer_id"] != b["mapping"]["customer_id"]
    with Session(engine) as session:
        customers = SqlCustomerRepository(session)
        assert [customers.get(c["mapping"]["customer_id"]).external_customer_id for c in (a, b)] == [
            f"aws:{license_id(first['identifiers']['license_arn'])}",
            f"aws:{license_id(second['identifiers']['license_arn'])}"]

    used_at = datetime.now(UTC)  # the contracts start at their events' instant: usage comes after
    ingest(engine, a["mapping"]["customer_id"], 5000, used_at)  # 500 units
    ingest(engine, b["mapping"]["customer_id"], 3000, used_at)  # 300 units
    adapter = app.extensions["marketsync"].adapter("aws")
    now = used_at + timedelta(seconds=1)
    for contract in (a, b):
        assert hourly.prepare(engine, contract["id"], hour_floor(now), now=now).outcome == "queued"
    hourly.send_pending(engine, adapter, "aws", now=now)

    usage = aws.usage()
    got = {r["license_arn"]: r["quantity"] for r in usage["totals"] if r["quantity"]}
    assert got == {first["identifiers"]["license_arn"]: 500, second["identifiers"]["license_arn"]: 300}
