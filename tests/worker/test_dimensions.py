"""A two-dimension listing end to end: each marketplace's real SDK client against its emulator.

The plan prices calls (0.0007 each, key ``calls``) and tokens (0.001 each); the listing reports
calls as ``api_calls`` in units of 0.001 and the rest as ``usage_fee`` in units of 0.01. Each
dimension keeps its own sub-unit remainder, is reported at most once per hour, and is rounded
per the close policy at the final flush: the emulator's totals are exact per dimension.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import (
    TWO_DIMENSIONS, SyncEnv, build_env, ingest, map_contract, mark_canceled, setup_billing,
    setup_two_dimension_billing, start_of_test_window,
)
from worker import cancellation, hourly, ledger, reports
from worker.persistence.contracts import ContractRow, ListingRow
from worker.persistence.ledger import ContractSyncRow, LedgerRow

MARKETPLACES = ["aws", "azure", "gcp"]


@pytest.fixture(params=MARKETPLACES)
def env(request: pytest.FixtureRequest, any_engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    """Return a fresh emulator, its adapter, and a billing core with a two-price plan (SQLite, then PostgreSQL)."""
    environment = build_env(request.param, any_engine, emulator_servers[request.param])
    environment.control("POST", "reset")
    setup_billing(any_engine)
    setup_two_dimension_billing(any_engine)
    return environment


def _calls(env: SyncEnv, customer: str, at: datetime, *tokens: int) -> None:
    for n, amount in enumerate(tokens):
        ingest(env.engine, customer, amount, at + timedelta(seconds=n))


def _rows(engine: Engine, contract_id: str) -> list[tuple[str, str, int]]:
    with Session(engine) as session:
        return [(r.hour.strftime("%H"), r.dimension, r.quantity) for r in session.execute(
            select(LedgerRow).where(LedgerRow.contract_id == contract_id).order_by(LedgerRow.hour, LedgerRow.dimension)
        ).scalars()]


def test_two_dimensions_hourly_then_final_flush_exact_per_dimension(env: SyncEnv) -> None:
    """Hourly reports and the final flush give each dimension exactly its own units at the emulator."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start, plan_id="plan_dims", dimensions=TWO_DIMENSIONS,
                                      close_rounding="ceil")
    now = datetime.now(UTC)
    # Hour 0: 3 calls (0.0021 -> 2 api_calls), 1245 tokens (1.245 -> 124 usage_fee).
    _calls(env, customer, start + timedelta(minutes=5), 1234, 1, 10)
    first = hourly.report_contract(env.engine, env.adapter, contract, start, now=now)
    assert first["dimensions"] == {"api_calls": 2, "usage_fee": 124}, first
    # Hour 1: 5 calls (0.0035 -> 3), 1250 tokens (1.250 -> 125): one more unit of each.
    _calls(env, customer, start + timedelta(minutes=65), 4, 1)
    second = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1), now=now)
    assert second["dimensions"] == {"api_calls": 1, "usage_fee": 1}, second
    # Hour 2: 14 calls (0.0098 -> 9), no new tokens: api_calls only.
    _calls(env, customer, start + timedelta(minutes=125), *[0] * 9)
    third = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=2), now=now)
    assert third["dimensions"] == {"api_calls": 6}, third
    # The same hour again reports nothing in either dimension.
    again = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=2), now=now)
    assert again["outcome"] == "stamp_used" and again["dimensions"] == {}
    assert env.totals_by_dimension() == {"api_calls": 9, "usage_fee": 125}

    # One more call of 1 token, then the cancellation: ceil per dimension, each from its own remainder:
    # 15 calls = 0.0105 -> 11 api_calls (2 more); 1251 tokens = 1.251 -> 126 usage_fee (1 more).
    _calls(env, customer, start + timedelta(minutes=150), 1)
    # Canceled now, in the current hour: the three hours before it are taken by the hourly
    # reports, so a cancellation a minute ago at the top of an hour would find no free stamp.
    mark_canceled(env.engine, contract, now)
    final = cancellation.flush(env.engine, env.adapter, contract, now=now, final=True)
    assert final["dimensions"] == {"api_calls": 2, "usage_fee": 1} and final["closed"] is True, final
    assert env.totals_by_dimension() == {"api_calls": 11, "usage_fee": 126}

    counts = {c["dimension"]: c["units_reported"] for c in ledger.dimension_counts(env.engine, contract)}
    assert counts == {"api_calls": 11, "usage_fee": 126}
    with Session(env.engine) as session:
        state = session.get(ContractSyncRow, contract)
        assert state is not None and state.units_reported == 137 and Decimal(state.last_cost) == Decimal("1.2615")
    rows = _rows(env.engine, contract)
    # AWS also gets its hourly zero record for usage_fee in hour 2 (one per customer and dimension).
    zero = [("usage_fee", 0)] if env.marketplace == "aws" else []
    assert [(d, q) for _h, d, q in rows] == [
        ("api_calls", 2), ("usage_fee", 124), ("api_calls", 1), ("usage_fee", 1), ("api_calls", 6), *zero,
        ("api_calls", 2), ("usage_fee", 1)]
    assert len({h for h, _d, _q in rows}) == 4  # three hourly stamps and the flush's
    assert len({(h, d) for h, d, _q in rows}) == len(rows)  # each dimension at most once per stamp

    # The metering report prices each dimension at its own unit price.
    months = {start.strftime("%Y-%m"), now.strftime("%Y-%m")}
    report = [r for month in sorted(months) for r in reports.metering_report(env.engine, month)
              if r["contract_id"] == contract]
    amounts: dict[str, tuple[int, Decimal, str]] = {}
    for r in report:
        units, amount, _price = amounts.get(r["dimension"], (0, Decimal(0), ""))
        amounts[r["dimension"]] = (units + r["units_reported"], amount + Decimal(r["amount"]), r["unit_price"])
    assert amounts == {"api_calls": (11, Decimal("0.011"), "0.001"), "usage_fee": (126, Decimal("1.26"), "0.01")}


def test_listing_dimension_switch_keeps_counts_per_dimension(env: SyncEnv) -> None:
    """A single-dimension contract moved to two dimensions reports the new dimension's units from zero, once."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start, plan_id="plan_dims",
                                      dimensions=[{"name": "usage_fee", "unit_price": "0.01", "prices": "remaining"}])
    now = datetime.now(UTC)
    _calls(env, customer, start + timedelta(minutes=5), 1000, 1000)  # 2 calls (0.0014) + 2000 tokens = 2.0014
    first = hourly.report_contract(env.engine, env.adapter, contract, start, now=now)
    assert first["dimensions"] == {"usage_fee": 200}
    with Session(env.engine) as session:
        listing = session.get(ListingRow, session.get(ContractRow, contract).listing_id)
        listing.dimensions = TWO_DIMENSIONS
        session.add(listing)
        session.commit()
    _calls(env, customer, start + timedelta(minutes=65), 0, 0)  # 4 calls (0.0028 -> 2); tokens still 2.000
    second = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1), now=now)
    # usage_fee lost the calls' 0.0014 to api_calls: its total is now 200 (nothing new, nothing over).
    assert second["dimensions"] == {"api_calls": 2}, second


def test_price_mapped_to_no_dimension_is_a_cost_error(env: SyncEnv) -> None:
    """A price no dimension takes (a plan version added it later) puts the contract in cost_error, sending nothing."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start, plan_id="plan_dims", dimensions=TWO_DIMENSIONS[:1])
    _calls(env, customer, start + timedelta(minutes=5), 1000)
    result = hourly.report_contract(env.engine, env.adapter, contract, start, now=datetime.now(UTC))
    assert result["outcome"] == ledger.COST_ERROR and "'tokens'" in result["detail"], result
    with Session(env.engine) as session:
        state = session.get(ContractSyncRow, contract)
        assert state is not None and state.last_error.startswith("unmapped_price: ")
    assert _rows(env.engine, contract) == [] and env.totals_by_dimension() == {}


@pytest.mark.parametrize("env", ["aws"], indirect=True)
def test_rejected_dimension_is_reported_again_alone(env: SyncEnv) -> None:
    """A record AWS rejects (dimension not on the product) leaves that dimension's count only; it is reported later."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start, plan_id="plan_dims", dimensions=TWO_DIMENSIONS)
    env.control("POST", "reset")  # the product knows usage_fee only
    identifiers = env.new_identifiers("prod-sync", ["usage_fee"])
    with Session(env.engine) as session:
        row = session.get(ContractRow, contract)
        row.cloud_identifiers = identifiers
        row.license_arn, row.customer_aws_account_id = identifiers["license_arn"], identifiers["customer_aws_account_id"]
        session.add(row)
        session.commit()
    now = datetime.now(UTC)
    _calls(env, customer, start + timedelta(minutes=5), 1234, 1, 10)  # 2 api_calls, 124 usage_fee
    first = hourly.report_contract(env.engine, env.adapter, contract, start, now=now)
    assert first["sent"] == {"accepted": 1, "rejected": 1}, first
    counts = {c["dimension"]: c["units_reported"] for c in ledger.dimension_counts(env.engine, contract)}
    assert counts == {"api_calls": 0, "usage_fee": 124}
    env.control("POST", "customers", {"product_code": "prod-sync", "dimensions": ["api_calls"]})
    second = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1), now=now)
    assert second["dimensions"] == {"api_calls": 2}, second
    assert env.totals_by_dimension() == {"api_calls": 2, "usage_fee": 124}
