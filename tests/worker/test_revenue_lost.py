"""Held and expired reports against the emulators, through the real clients (Azure HTTP, boto3, Service Control).

A suspended Azure subscription takes no usage: its contract's reports are held and go out after
reinstatement while inside Azure's 24-hour window; past a marketplace's window a report is
``expired`` (never sent, its units and amount shown as revenue lost). Google's operationId is
pinned on the ledger row, so a resend carries the id of the first send.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select, update
from sqlmodel import Session

from marketplaces.base import TransientMarketplaceError
from marketplaces.emulators.control import parse_instant
from marketplaces.emulators.server import EmulatorServer
from marketplaces.gcp import operation_id_for
from tests.worker.sync_support import SyncEnv, build_env, ingest, map_contract, setup_billing, start_of_test_window
from worker import hourly, ledger
from worker.billing_gateway import CoreBillingGateway
from worker.contract_events import ContractEvent
from worker.contracts import apply_event
from worker.persistence.contracts import ContractRow
from worker.persistence.ledger import ContractSyncRow, LedgerRow


def _env(marketplace: str, engine: Engine, servers: dict[str, EmulatorServer]) -> SyncEnv:
    environment = build_env(marketplace, engine, servers[marketplace])
    environment.control("POST", "reset")
    setup_billing(engine)  # tokens at 0.001 each; the listings' unit is 0.01, so 10 tokens are one unit
    return environment


@pytest.fixture
def azure(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    return _env("azure", engine, emulator_servers)


@pytest.fixture
def aws(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    return _env("aws", engine, emulator_servers)


@pytest.fixture
def gcp(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    return _env("gcp", engine, emulator_servers)


def _ledger(engine: Engine, contract_id: str) -> list[LedgerRow]:
    with Session(engine) as session:
        return list(session.execute(select(LedgerRow).where(LedgerRow.contract_id == contract_id)
                                    .order_by(LedgerRow.hour)).scalars())


def _by_hour(env: SyncEnv) -> dict[datetime, int]:
    return {parse_instant(hour): units for hour, units in env.totals_by_hour().items()}


def _apply(engine: Engine, contract_id: str, kind: str, now: datetime) -> str:
    """Apply a lifecycle event (as the Azure webhook's Suspend / Reinstate become) to the contract."""
    event = ContractEvent(kind=kind, source="contracts", contract_key=contract_id, marketplace="azure",
                          occurred_at=now, effective_at=now)
    return apply_event(engine, event, CoreBillingGateway(engine), now=now).detail


def _subscription(env: SyncEnv, contract_id: str) -> str:
    with Session(env.engine) as session:
        return session.get(ContractRow, contract_id).azure_subscription_id  # type: ignore[union-attr]


def _sync_state(engine: Engine, contract_id: str) -> ContractSyncRow:
    with Session(engine) as session:
        state = session.get(ContractSyncRow, contract_id)
        assert state is not None
        session.expunge(state)
        return state


# --- Azure: suspended, held, reinstated -------------------------------------------------------------

def test_suspended_azure_contract_is_held_then_reported_after_reinstatement(azure: SyncEnv) -> None:
    """While the subscription is suspended the contract's reports are written but not sent (not even by the
    sweeper); after reinstatement both go out under their own hours, and Azure's totals are exact."""
    start = start_of_test_window()
    contract, customer = map_contract(azure, start=start)
    sub = _subscription(azure, contract)
    now = datetime.now(UTC)
    azure.control("POST", f"subscriptions/{sub}/suspend")
    assert _apply(azure.engine, contract, "suspended", now) == "suspended"

    ingest(azure.engine, customer, 5000, start + timedelta(minutes=10))  # 5.000 -> 500 units
    first = hourly.report_contract(azure.engine, azure.adapter, contract, start, now=now)
    ingest(azure.engine, customer, 3000, start + timedelta(minutes=70))  # 8.000 -> 300 more
    second = hourly.report_contract(azure.engine, azure.adapter, contract, start + timedelta(hours=1), now=now)
    assert (first["quantity"], first["sent"]) == (500, {}) and (second["quantity"], second["sent"]) == (300, {})
    assert hourly.send_all_pending(azure.engine, lambda _: azure.adapter, now=now) == {"azure": {}}
    assert azure.totals() == 0
    assert [(r.status, r.attempts, r.quantity) for r in _ledger(azure.engine, contract)] == [
        ("pending", 0, 500), ("pending", 0, 300)]

    azure.control("POST", f"subscriptions/{sub}/reinstate")
    assert _apply(azure.engine, contract, "reinstated", now) == "reinstated"
    assert hourly.send_pending(azure.engine, azure.adapter, "azure", now=now) == {"accepted": 2}
    assert _by_hour(azure) == {start: 500, start + timedelta(hours=1): 300}
    assert [r.status for r in _ledger(azure.engine, contract)] == ["accepted", "accepted"]


def test_resource_not_active_answer_holds_the_report(azure: SyncEnv) -> None:
    """Suspended at Azure before its webhook arrived: ResourceNotActive holds the report (pending, units still
    counted, neither failed nor rejected), the next sends leave it alone, and it goes out identical later."""
    start = start_of_test_window()
    contract, customer = map_contract(azure, start=start)
    azure.control("POST", f"subscriptions/{_subscription(azure, contract)}/suspend")
    ingest(azure.engine, customer, 5000, start + timedelta(minutes=10))
    now = datetime.now(UTC)

    result = hourly.report_contract(azure.engine, azure.adapter, contract, start, now=now)
    assert result["sent"] == {"held": 1}, result
    [row] = _ledger(azure.engine, contract)
    assert (row.status, row.quantity, row.attempts) == ("pending", 500, 1)
    assert row.detail.startswith("held: ResourceNotActive") and ledger.utc(row.held_until) == now + ledger.HOLD_RETRY
    state = _sync_state(azure.engine, contract)
    assert (state.units_reported, state.last_outcome) == (500, "held")
    assert hourly.send_pending(azure.engine, azure.adapter, "azure", now=now + timedelta(minutes=5)) == {}
    assert _ledger(azure.engine, contract)[0].attempts == 1

    azure.control("POST", f"subscriptions/{_subscription(azure, contract)}/reinstate")
    later = now + ledger.HOLD_RETRY
    assert hourly.send_pending(azure.engine, azure.adapter, "azure", now=later) == {"accepted": 1}
    assert _by_hour(azure) == {start: 500}
    # Nothing left to report: the held units were never taken out of the count.
    again = hourly.report_contract(azure.engine, azure.adapter, contract, start + timedelta(hours=1), now=later)
    assert again["quantity"] == 0 and azure.totals() == 500


def test_reinstatement_releases_held_reports_at_once(azure: SyncEnv) -> None:
    """A reinstatement lets reports held after a ResourceNotActive answer go out without waiting for the hold."""
    start = start_of_test_window()
    contract, customer = map_contract(azure, start=start)
    sub = _subscription(azure, contract)
    azure.control("POST", f"subscriptions/{sub}/suspend")
    ingest(azure.engine, customer, 1234, start + timedelta(minutes=10))
    now = datetime.now(UTC)
    assert hourly.report_contract(azure.engine, azure.adapter, contract, start, now=now)["sent"] == {"held": 1}

    azure.control("POST", f"subscriptions/{sub}/reinstate")
    assert _apply(azure.engine, contract, "reinstated", now) == "reinstated; 1 held report(s) released"
    assert hourly.send_pending(azure.engine, azure.adapter, "azure", now=now) == {"accepted": 1}
    assert azure.totals() == 123


def test_held_past_azures_window_expires_with_its_amount(azure: SyncEnv) -> None:
    """Suspended for longer than 24 hours: the hour past the window expires (never sent; 500 units, 5.00 lost),
    the hour still inside it is reported after reinstatement, and no later hour carries the lost units."""
    start = start_of_test_window()
    contract, customer = map_contract(azure, start=start)
    sub = _subscription(azure, contract)
    now = datetime.now(UTC)
    azure.control("POST", f"subscriptions/{sub}/suspend")
    _apply(azure.engine, contract, "suspended", now)
    ingest(azure.engine, customer, 5000, start + timedelta(minutes=10))
    hourly.report_contract(azure.engine, azure.adapter, contract, start, now=now)
    ingest(azure.engine, customer, 3000, start + timedelta(minutes=70))
    hourly.report_contract(azure.engine, azure.adapter, contract, start + timedelta(hours=1), now=now)

    later = start + timedelta(hours=24, minutes=5)  # the first hour is out of the window, the second not yet
    azure.control("POST", "clock", {"now": later.isoformat()})
    azure.control("POST", f"subscriptions/{sub}/reinstate")
    _apply(azure.engine, contract, "reinstated", later)
    assert hourly.send_pending(azure.engine, azure.adapter, "azure", now=later) == {"expired": 1, "accepted": 1}

    assert _by_hour(azure) == {start + timedelta(hours=1): 300}
    lost, sent = _ledger(azure.engine, contract)
    assert (lost.status, lost.quantity, lost.unit_price, lost.attempts) == ("expired", 500, "0.01", 0)
    assert lost.detail.startswith("expired: ") and sent.status == "accepted"
    assert ledger.ledger_rows(azure.engine, contract)[0]["amount"] == "5.00"
    assert ledger.expired_totals(azure.engine) == {
        "azure": {"reports": 1, "units": 500, "amount": Decimal("5.00"), "unpriced": 0}}
    # The lost units stay counted: the next hour reports nothing more, and the expired row is never sent.
    after = hourly.report_contract(azure.engine, azure.adapter, contract, start + timedelta(hours=24), now=later)
    assert after["quantity"] == 0 and azure.totals() == 300
    assert hourly.send_pending(azure.engine, azure.adapter, "azure", now=later + timedelta(hours=2)) == {}
    assert _ledger(azure.engine, contract)[0].status == "expired"


# --- AWS: past the six hours ------------------------------------------------------------------------

def test_aws_report_past_its_window_expires_unsent(aws: SyncEnv) -> None:
    """A report still pending six hours after its hour is expired without a call (AWS would refuse the whole
    batch), keeps its units and unit price, and is never sent again."""
    start = start_of_test_window()
    contract, customer = map_contract(aws, start=start)
    ingest(aws.engine, customer, 4321, start + timedelta(minutes=10))  # 4.321 -> 432 units
    hourly.prepare(aws.engine, contract, start, now=datetime.now(UTC))  # written; AWS was unreachable, say

    later = start + timedelta(hours=6)
    assert hourly.send_pending(aws.engine, aws.adapter, "aws", now=later) == {"expired": 1}
    [row] = _ledger(aws.engine, contract)
    assert (row.status, row.quantity, row.unit_price, row.attempts, row.sent_at) == ("expired", 432, "0.01", 0, None)
    assert aws.control("GET", "usage")["records"] == []
    assert hourly.send_pending(aws.engine, aws.adapter, "aws", now=later + timedelta(hours=1)) == {}
    assert ledger.expired_totals(aws.engine)["aws"] == {"reports": 1, "units": 432, "amount": Decimal("4.32"),
                                                        "unpriced": 0}
    assert _sync_state(aws.engine, contract).last_outcome == "expired"


def test_aws_timestamp_out_of_bounds_expires_the_report(aws: SyncEnv) -> None:
    """AWS's clock says the hour is too old while ours does not: TimestampOutOfBounds expires the report instead
    of rejecting it, so it is not sent again with later usage."""
    start = start_of_test_window()
    contract, customer = map_contract(aws, start=start)
    ingest(aws.engine, customer, 5000, start + timedelta(minutes=10))
    hourly.prepare(aws.engine, contract, start, now=datetime.now(UTC))
    aws.control("POST", "clock", {"now": (start + timedelta(hours=7)).isoformat()})

    assert hourly.send_pending(aws.engine, aws.adapter, "aws", now=start + timedelta(hours=5)) == {"expired": 1}
    [row] = _ledger(aws.engine, contract)
    assert row.status == "expired" and "TimestampOutOfBoundsException" in row.detail and row.attempts == 1
    assert aws.totals() == 0
    assert hourly.send_pending(aws.engine, aws.adapter, "aws", now=start + timedelta(hours=5)) == {}
    assert _sync_state(aws.engine, contract).units_reported == 500  # counted (lost), not reported again


def test_rows_written_before_unit_prices_were_recorded_get_theirs_on_expiry(aws: SyncEnv) -> None:
    """An expiring row without a recorded unit price takes its dimension's current one, so its amount is known."""
    start = start_of_test_window()
    contract, customer = map_contract(aws, start=start, unit_price="0.05")
    ingest(aws.engine, customer, 5000, start + timedelta(minutes=10))  # 5.000 -> 100 units of 0.05
    hourly.prepare(aws.engine, contract, start, now=datetime.now(UTC))
    with Session(aws.engine) as session:
        session.execute(update(LedgerRow).where(LedgerRow.contract_id == contract).values(unit_price=None))
        session.commit()

    hourly.send_pending(aws.engine, aws.adapter, "aws", now=start + timedelta(hours=6))
    assert ledger.expired_totals(aws.engine)["aws"]["amount"] == Decimal("5.00")


# --- Google: the operationId of the first send --------------------------------------------------------

def test_gcp_resend_carries_the_operation_id_of_its_first_send(gcp: SyncEnv) -> None:
    """A report whose outcome is unknown (stored, then a 500) is resent under the same operationId even after
    the contract's identifiers changed, so Google counts it once; every reported operation was checked first."""
    start = start_of_test_window()
    contract, customer = map_contract(gcp, start=start)
    ingest(gcp.engine, customer, 5000, start + timedelta(minutes=10))
    now = datetime.now(UTC)
    gcp.control("POST", "faults", {"ambiguous_reports": True})
    with pytest.raises(TransientMarketplaceError):
        hourly.report_contract(gcp.engine, gcp.adapter, contract, start, now=now)
    [row] = _ledger(gcp.engine, contract)
    with Session(gcp.engine) as session:
        before = session.get(ContractRow, contract)
        assert before is not None
        first_id = operation_id_for(replace(hourly.usage_record(row, before), record_id=None))
    assert (row.status, row.marketplace_record_id) == ("pending", first_id)

    # Something changes the contract's identifiers meanwhile: derived afresh, the id would differ.
    with Session(gcp.engine) as session:
        changed = session.get(ContractRow, contract)
        assert changed is not None
        changed.gcp_entitlement_id = "another-entitlement"
        changed.cloud_identifiers = {**(changed.cloud_identifiers or {}), "entitlement_id": "another-entitlement"}
        session.add(changed)
        session.commit()
        assert operation_id_for(replace(hourly.usage_record(row, changed), record_id=None)) != first_id
    gcp.control("POST", "faults", {"ambiguous_reports": False})
    assert hourly.send_pending(gcp.engine, gcp.adapter, "gcp", now=now) == {"accepted": 1}

    usage = gcp.control("GET", "usage")
    assert [(op["operation"]["operationId"], op["received"]) for op in usage["operations"]] == [(first_id, 2)]
    assert gcp.totals() == 500
    assert [(c["operationId"], c["passed"]) for c in usage["checks"]] == [(first_id, True), (first_id, True)]
    assert _ledger(gcp.engine, contract)[0].marketplace_record_id == first_id
