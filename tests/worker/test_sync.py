"""The hourly sync and the cancellation flush against each marketplace's emulator.

Real adapters (boto3, the Azure HTTP client, google-cloud-service-control) talk to the
emulators over HTTP; the billing core computes costs from real stored events (SQLite).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from billing_core import use_fragments
from marketplaces.base import TransientMarketplaceError
from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import (
    SyncEnv, build_env, ingest, map_contract, setup_billing, start_of_test_window,
)
from worker import cancellation, hourly, ledger
from worker.metering import hour_floor
from worker.persistence.contracts import ContractRow
from worker.persistence.ledger import ContractSyncRow, LedgerRow

MARKETPLACES = ["aws", "azure", "gcp"]


@pytest.fixture(params=MARKETPLACES)
def env(request: pytest.FixtureRequest, engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    """Return a fresh emulator state, its adapter, and a billing core with one plan."""
    use_fragments(engine, True)  # the sync reads usage fragments here (the fault suite reads raw events)
    environment = build_env(request.param, engine, emulator_servers[request.param])
    environment.control("POST", "reset")
    setup_billing(engine)
    return environment


def _ledger(engine: Engine, contract_id: str) -> list[LedgerRow]:
    with Session(engine) as session:
        return list(session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract_id)
                                    .order_by(LedgerRow.hour)).scalars())


def test_hours_with_remainders(env: SyncEnv) -> None:
    """Several hours: the emulator's total is floor(cost / unit price), remainders carried forward."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    now = datetime.now(UTC)
    # 12345 tokens x 0.001 = 12.345 USD -> 1234 units of 0.01
    ingest(env.engine, customer, 12345, start + timedelta(minutes=10))
    first = hourly.report_contract(env.engine, env.adapter, contract, start, now=now)
    assert first["quantity"] == 1234, first
    # 4 more tokens: 12.349 -> still 1234: nothing new to send (AWS sends its hourly zero)
    ingest(env.engine, customer, 4, start + timedelta(minutes=70))
    second = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1), now=now)
    assert second["quantity"] == 0
    # 652 more tokens: 13.001 -> 1300 units: 66 sent
    ingest(env.engine, customer, 651, start + timedelta(minutes=130))
    ingest(env.engine, customer, 1, start + timedelta(minutes=131))
    third = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=2), now=now)
    assert third["quantity"] == 66
    assert env.totals() == 1300
    kinds = [r.kind for r in _ledger(env.engine, contract)]
    assert kinds == (["hourly", "zero", "hourly"] if env.marketplace == "aws" else ["hourly", "hourly"])
    assert all(r.status == "accepted" for r in _ledger(env.engine, contract))


def test_rerun_same_hour_never_reports_twice(env: SyncEnv) -> None:
    """Running the same hour again, or more hours with no new usage, sends nothing more."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 5000, start + timedelta(minutes=5))
    now = datetime.now(UTC)
    for _ in range(3):
        hourly.report_contract(env.engine, env.adapter, contract, start, now=now)
    hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1), now=now)
    assert env.totals() == 500


def test_amendment_lowering_cost_is_over_reported(env: SyncEnv) -> None:
    """A lower cost after reporting sends nothing and records the over-reported units."""
    from billing_core.events import deprecate_event
    from billing_core.persistence.events import SqlEventStore

    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 3000, start + timedelta(minutes=5), key="big")
    ingest(env.engine, customer, 1000, start + timedelta(minutes=6), key="small")
    now = datetime.now(UTC)
    hourly.report_contract(env.engine, env.adapter, contract, start, now=now)
    with Session(env.engine) as session:
        deprecate_event(SqlEventStore(session), "big")
        session.commit()
    result = hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1), now=now)
    assert result["quantity"] == 0
    assert env.totals() == 400
    with Session(env.engine) as session:
        state = session.get(ContractSyncRow, contract)
    assert state.over_reported == 300 and state.units_reported == 400


def test_metering_start_date_respected(env: SyncEnv) -> None:
    """Usage before the listing's metering start date (UTC midnight) is never reported."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = start_of_test_window()
    if start < today:
        pytest.skip("the test window crosses midnight")
    contract, customer = map_contract(env, start=start, metering_start=today + timedelta(days=1))
    ingest(env.engine, customer, 9000, start + timedelta(minutes=5))
    hourly.report_contract(env.engine, env.adapter, contract, start, now=datetime.now(UTC))
    assert env.totals() == 0


def test_two_workers_same_hour(env: SyncEnv) -> None:
    """Eight concurrent runs of the same hour report the units exactly once."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 7777, start + timedelta(minutes=5))
    now = datetime.now(UTC)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: hourly.report_contract(env.engine, env.adapter, contract, start, now=now), range(8)))
    hourly.send_pending(env.engine, env.adapter, env.marketplace, now=now)
    assert env.totals() == 777


def test_crash_between_ledger_write_and_send(env: SyncEnv) -> None:
    """A pending row whose sender died is sent by the next run, once."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 2500, start + timedelta(minutes=5))
    now = datetime.now(UTC)
    prepared = hourly.prepare(env.engine, contract, start, now=now)  # the worker dies here
    assert prepared.outcome == "queued" and env.totals() == 0
    later = now + ledger.CLAIM_TIMEOUT + timedelta(seconds=1)
    hourly.report_contract(env.engine, env.adapter, contract, start + timedelta(hours=1), now=later)
    assert env.totals() == 250
    assert [r.status for r in _ledger(env.engine, contract)][0] == "accepted"


def test_crash_between_send_and_record(env: SyncEnv) -> None:
    """A report sent but not recorded is resent identically; the marketplace total stays exact."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 4200, start + timedelta(minutes=5))
    now = datetime.now(UTC)
    hourly.prepare(env.engine, contract, start, now=now)
    token, rows = ledger.claim(env.engine, env.marketplace, now=now, first=contract, limit=25)
    env.adapter.report([hourly.usage_record(r, _contract(env.engine, contract)) for r in rows])  # then it dies
    assert env.totals() == 420
    later = now + ledger.CLAIM_TIMEOUT + timedelta(seconds=1)
    hourly.send_pending(env.engine, env.adapter, env.marketplace, now=later)
    assert env.totals() == 420
    assert _ledger(env.engine, contract)[0].status in ("accepted", "duplicate")


def test_outage_keeps_rows_pending_then_delivers(env: SyncEnv) -> None:
    """During an outage the run fails transiently, nothing is lost, and the retry delivers."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start)
    ingest(env.engine, customer, 999, start + timedelta(minutes=5))
    now = datetime.now(UTC)
    env.control("POST", "faults", {"outage": True})
    try:
        with pytest.raises(TransientMarketplaceError):
            hourly.report_contract(env.engine, env.adapter, contract, start, now=now)
    finally:
        env.control("POST", "faults", {"outage": False})
    assert _ledger(env.engine, contract)[0].status == "pending"
    hourly.send_pending(env.engine, env.adapter, env.marketplace, now=now)
    assert env.totals() == 99


def test_cancellation_flush_and_close(env: SyncEnv) -> None:
    """A flush reports at once; the final flush rounds per policy and closes the contract."""
    start = start_of_test_window()
    contract, customer = map_contract(env, start=start, close_rounding="half_up")
    ingest(env.engine, customer, 1234, start + timedelta(minutes=5))  # 1.234 -> 123 units
    now = datetime.now(UTC)
    hourly.report_contract(env.engine, env.adapter, contract, start, now=now)
    canceled_at = now - timedelta(minutes=1)
    with Session(env.engine) as session:
        row = session.get(ContractRow, contract)
        row.status, row.canceled_at, row.cancel_effective_at = "canceled", canceled_at, canceled_at
        session.add(row)
        session.commit()
    ingest(env.engine, customer, 6, start + timedelta(minutes=20))  # 1.240 -> 124
    first = cancellation.flush(env.engine, env.adapter, contract, now=now, final=False)
    assert first["quantity"] == 1
    ingest(env.engine, customer, 5, start + timedelta(minutes=30))  # 1.245 -> half_up 125 (floor 124)
    final = cancellation.flush(env.engine, env.adapter, contract, now=now, final=True)
    if env.marketplace != "azure":
        # This hour's stamp is taken: the final report waits for the next hour boundary.
        assert final["outcome"] == "wait"
        later = hour_floor(now) + timedelta(hours=1, seconds=5)
        env.control("POST", "clock", {"now": later.isoformat().replace("+00:00", "Z")})
        try:
            final = cancellation.flush(env.engine, env.adapter, contract, now=later, final=True)
        finally:
            env.control("POST", "clock", {"now": None})
    assert final["quantity"] == 1 and final["closed"] is True, final
    assert env.totals() == 125
    assert _contract(env.engine, contract).status == "closed"
    # Usage for a time after the cancellation is kept and flagged unbillable, never reported.
    ingest(env.engine, customer, 500, now)
    assert cancellation.flag_unbillable(env.engine, now=now) == {contract: 1}
    assert hourly.report_contract(env.engine, env.adapter, contract, now, now=now)["outcome"] == "skipped"
    assert env.totals() == 125


def _contract(engine: Engine, contract_id: str) -> ContractRow:
    with Session(engine) as session:
        row = session.get(ContractRow, contract_id)
        session.expunge_all()
        return row


def test_cost_error_contract_does_not_block_its_chunk(env: SyncEnv) -> None:
    """A contract whose usage total is beyond the range gets the cost_error state; the rest of its chunk is reported."""
    from billing_core.events import ingest_events
    from billing_core.persistence.events import SqlEventStore

    start = start_of_test_window()
    healthy, customer = map_contract(env, start=start)
    broken, heavy = map_contract(env, start=start)
    other, third = map_contract(env, start=start)
    ingest(env.engine, customer, 5000, start + timedelta(minutes=5))
    ingest(env.engine, third, 3000, start + timedelta(minutes=5))
    events = [{"idempotency_key": f"heavy-{i}", "customer_id": heavy, "event_name": "api_call",
               "timestamp": (start + timedelta(seconds=i)).isoformat(), "properties": {"tokens": 999_999_999_999_999}}
              for i in range(1001)]  # a total of ~1.001e18 tokens: beyond the 10^18 a sum may reach
    for at in range(0, len(events), 500):
        with Session(env.engine) as session:
            ingest_events(SqlEventStore(session), events[at:at + 500], now=datetime.now(UTC))
            session.commit()
    now = datetime.now(UTC)
    result = hourly.report_many(env.engine, lambda _m: env.adapter, [healthy, broken, other], start, now=now)
    assert set(result["errors"]) == {broken} and "usage_out_of_range" in result["errors"][broken]
    hourly.send_pending(env.engine, env.adapter, env.marketplace, now=now)
    assert env.totals() == 800  # 500 + 300 units of 0.01 USD: the healthy contracts only
    with Session(env.engine) as session:
        state = session.get(ContractSyncRow, broken)
        assert state is not None and state.last_outcome == ledger.COST_ERROR
        assert f"customer {heavy!r}" in state.last_error
    assert _ledger(env.engine, broken) == []
    again = hourly.report_contract(env.engine, env.adapter, broken, start + timedelta(hours=1), now=now)
    assert again["outcome"] == ledger.COST_ERROR  # one contract at a time: the same state, no exception
