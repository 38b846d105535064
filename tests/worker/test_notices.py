"""The sync's own webhook events land in the outbox with the change that caused them: a report
expired or rejected, a contract canceled and closed, a deadline at risk — ordered per contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlmodel import Session

from billing_core import service_outbox
from billing_core.persistence.outbox import WebhookDeliveryRow, WebhookEventRow
from marketplaces.emulators.server import EmulatorServer
from tests.worker.sync_support import SyncEnv, build_env, ingest, map_contract, setup_billing, start_of_test_window
from worker import cancellation, hourly
from worker.billing_gateway import CoreBillingGateway
from worker.contract_events import ContractEvent
from worker.contracts import apply_event, patch_contract


@pytest.fixture
def aws(engine: Engine, emulator_servers: dict[str, EmulatorServer]) -> SyncEnv:
    environment = build_env("aws", engine, emulator_servers["aws"])
    environment.control("POST", "reset")
    setup_billing(engine)
    with Session(engine) as session:
        service_outbox.create_endpoint(session, url="https://hooks.example.test/in", now=datetime.now(UTC),
                                       endpoint_id="we_test")
        session.commit()
    return environment


def _events(engine: Engine) -> list[dict[str, Any]]:
    with Session(engine) as session:
        rows = session.execute(select(WebhookEventRow).order_by(WebhookEventRow.seq)).scalars()
        return [{"type": r.type, "key": r.ordering_key, **json.loads(r.body)} for r in rows]


def test_expired_report_is_an_event_with_its_units_and_amount(aws: SyncEnv) -> None:
    """A report past AWS's window becomes ``marketplace_report.expired`` with its units and amount, with a delivery."""
    start = start_of_test_window()
    contract, customer = map_contract(aws, start=start)
    ingest(aws.engine, customer, 4321, start + timedelta(minutes=10))  # 432 units of 0.01
    hourly.prepare(aws.engine, contract, start, now=datetime.now(UTC))
    assert hourly.send_pending(aws.engine, aws.adapter, "aws", now=start + timedelta(hours=6)) == {"expired": 1}
    [expired] = [e for e in _events(aws.engine) if e["type"].startswith("marketplace_report.")]
    report = expired["marketplace_report"]
    assert expired["type"] == "marketplace_report.expired" and expired["key"] == f"contract:{contract}"
    assert (report["contract_id"], report["quantity"], report["amount"], report["status"]) == (
        contract, 432, "4.32", "expired")
    with Session(aws.engine) as session:
        assert session.execute(select(WebhookDeliveryRow.endpoint_id)).scalars().all() == ["we_test"]


def test_contract_lifecycle_events(aws: SyncEnv) -> None:
    """Canceling, a deadline at risk, closing and an operator's unmap each emit their event, in order."""
    start = start_of_test_window()
    contract, _ = map_contract(aws, start=start)
    now = datetime.now(UTC)
    cancel = ContractEvent(kind="canceled", source="contracts", contract_key=contract, marketplace="aws",
                           occurred_at=now, effective_at=now)
    apply_event(aws.engine, cancel, CoreBillingGateway(aws.engine), now=now)
    cancellation.watch_deadlines(aws.engine, _Counters(), now=now + timedelta(days=30))
    assert cancellation.close_if_settled(aws.engine, contract, now=now)
    patch_contract(aws.engine, contract, CoreBillingGateway(aws.engine), subscription_id=None, custom_properties=None,
                   now=now, unmap=True)
    types = [e["type"] for e in _events(aws.engine) if e["key"] == f"contract:{contract}"]
    assert types == ["contract.canceled", "marketplace_report.deadline_at_risk", "contract.closed",
                     "contract.unmapped"]
    closed = next(e for e in _events(aws.engine) if e["type"] == "contract.closed")
    assert closed["contract"]["status"] == "closed" and closed["contract"]["closed_at"] is not None


class _Counters:
    def incr(self, name: str) -> int:
        return 1
