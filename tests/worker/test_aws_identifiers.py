"""2026's AWS rules through the hourly send, the real boto3 client and the AWS emulator
(docs/marketplaces.md §2.1): the listing decides the identifiers (CustomerIdentifier only when
legacy, account + license otherwise, never both), one product per BatchMeterUsage call, and no
ProductCode for Concurrent Agreements listings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import SyncEnv, fresh_env, ingest, map_contract, start_of_test_window
from tests.billing_core.test_migrations import empty_engine  # noqa: F401  (SQLite and PostgreSQL)
from worker import hourly

KINDS = ("CustomerIdentifier", "CustomerAWSAccountId", "LicenseArn")


@pytest.fixture
def env(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    return fresh_env("aws", engine, emulator_servers)


@pytest.fixture
def calls(env: SyncEnv) -> list[dict[str, Any]]:
    """The parameters of every BatchMeterUsage call the adapter's boto3 client makes."""
    seen: list[dict[str, Any]] = []
    env.adapter.client.meta.events.register(
        "provide-client-params.marketplace-metering.BatchMeterUsage", lambda params, **_: seen.append(dict(params)))
    return seen


def _report(env: SyncEnv, contracts: list[tuple[str, str]], start: datetime) -> None:
    now = datetime.now(UTC)
    for _, customer in contracts:
        ingest(env.engine, customer, 3000, start + timedelta(minutes=5))
    for contract, _ in contracts:
        hourly.prepare(env.engine, contract, start, now=now)
    hourly.send_pending(env.engine, env.adapter, "aws", now=now)


def _records(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [record for call in calls for record in call["UsageRecords"]]


@pytest.mark.parametrize(
    ("flags", "kinds", "product_code"),
    [
        pytest.param({}, {"CustomerAWSAccountId", "LicenseArn"}, True, id="current"),
        pytest.param({"aws_legacy_identifiers": True}, {"CustomerIdentifier"}, True, id="legacy"),
        pytest.param({"aws_concurrent_agreements": True}, {"CustomerAWSAccountId", "LicenseArn"}, False,
                     id="concurrent-agreements"),
    ],
)
def test_the_listing_decides_the_identifiers(env: SyncEnv, calls: list[dict[str, Any]], flags: dict[str, bool],
                                             kinds: set[str], product_code: bool) -> None:
    """A contract holding every identifier is metered with exactly one kind, as its listing says."""
    start = start_of_test_window()
    contract = map_contract(env, start=start, **flags)

    _report(env, [contract], start)

    assert env.totals() == 300
    [call] = calls
    assert ("ProductCode" in call) is product_code
    assert [{k for k in KINDS if k in r} for r in _records(calls)] == [kinds]


@pytest.mark.parametrize("flags", [{}, {"aws_concurrent_agreements": True}], ids=["product-code", "concurrent-agreements"])
def test_two_products_in_one_send_go_out_as_two_calls(env: SyncEnv, calls: list[dict[str, Any]],
                                                      flags: dict[str, bool]) -> None:
    """Pending rows of two products claimed together are sent in one call per product, all accepted."""
    start = start_of_test_window()
    contracts = [map_contract(env, start=start, aws_product_code="prod-one", **flags),
                 map_contract(env, start=start, aws_product_code="prod-two", **flags),
                 map_contract(env, start=start, aws_product_code="prod-one", **flags)]

    _report(env, contracts, start)

    assert env.totals() == 900
    assert sorted(len(c["UsageRecords"]) for c in calls) == [1, 2]
    usage = env.control("GET", "usage")["records"]
    assert sorted(r["product_code"] for r in usage) == ["prod-one", "prod-one", "prod-two"]
    for record in _records(calls):
        assert not ("CustomerIdentifier" in record and "CustomerAWSAccountId" in record)


def test_migration_marks_existing_listings_legacy(empty_engine: Engine) -> None:
    """Listings stored before sync_0004 become legacy (they keep metering as before); later ones are not."""
    from sqlalchemy import text
    from sqlmodel import Session

    from worker import db
    from worker.persistence.contracts import ListingRow

    db.upgrade(empty_engine, "sync_0003")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    with empty_engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO listings (id, marketplace, product_id, plan_id, name, billing_plan_id, dimension, unit_price, "
            "currency, close_rounding, include_fixed_fees, approve_entitlements, created_at, updated_at) VALUES "
            "('lst_old', 'aws', 'prod-old', '', '', 'plan_1', 'usage_fee', '0.01', 'USD', 'floor', false, true, :now, :now)"),
            {"now": now})

    db.upgrade(empty_engine)

    with Session(empty_engine) as session:
        session.add(ListingRow(id="lst_new", marketplace="aws", product_id="prod-new", billing_plan_id="plan_1",
                               dimension="usage_fee", unit_price="0.01", created_at=now, updated_at=now))
        session.commit()
        old, new = session.get(ListingRow, "lst_old"), session.get(ListingRow, "lst_new")
        assert (old.aws_legacy_identifiers, old.aws_concurrent_agreements) == (True, False)
        assert (new.aws_legacy_identifiers, new.aws_concurrent_agreements) == (False, False)
