"""Dashboard fixtures: an AWS emulator, a seeded database, a logged-in client.

The seed uses the real parts: contracts mapped to billing-core subscriptions, usage events,
reports sent through the real AWS adapter (boto3) to the emulator, one of them failed by the
emulator refusing the credentials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlmodel import Session

from config import Settings
from marketplaces.emulators.server import EmulatorServer
from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET
from tests.worker.sync_support import SyncEnv, emulator_factory, ingest, map_contract, setup_billing
from worker import hourly
from worker.billing_gateway import CoreBillingGateway
from worker.metering import hour_floor
from worker.persistence.contracts import ContractRow

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def aws_emulator() -> Iterator[EmulatorServer]:
    """Serve one AWS emulator for the session."""
    server = EmulatorServer(emulator_factory("aws")()).start()
    yield server
    server.stop()


@pytest.fixture
def settings(tmp_path: Path, sqlite_url: str, redis_url: str, aws_emulator: EmulatorServer) -> Settings:
    """Return the test settings with the sandbox AWS adapter pointed at the session's emulator."""
    return Settings.from_env({
        "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": sqlite_url, "REDIS_URL": redis_url,
        "API_KEYS": TEST_API_KEY, "WEBHOOK_SECRETS": TEST_WEBHOOK_SECRET, "LOG_LEVEL": "WARNING",
        "MARKETPLACE_MODE": "sandbox", "EMULATOR_HOST": "127.0.0.1", "AWS_EMULATOR_PORT": str(aws_emulator.port),
        "GCP_PUSH_AUDIENCE": "http://127.0.0.1/unused",
    })


@dataclass
class Seeded:
    """Ids of the seeded contracts and subscriptions."""

    acme: str  # mapped AWS contract with accepted reports and one failed report
    unmapped: str  # AWS contract with no subscription
    canceled: str  # canceled AWS contract, not closed, deadline ahead
    spare_subscription: str  # a subscription of the unmapped contract's customer, free to map
    taken_subscription: str  # Acme's subscription (mapping it elsewhere is a conflict)
    failed_ledger_id: int


def _update(engine: Any, contract_id: str, **values: Any) -> None:
    with Session(engine) as session:
        row = session.get(ContractRow, contract_id)
        for name, value in values.items():
            setattr(row, name, value)
        session.add(row)
        session.commit()


@pytest.fixture
def seeded(app: Any, aws_emulator: EmulatorServer) -> Seeded:
    """Seed three contracts: Acme (reports accepted, one failed), an unmapped one, a canceled one."""
    runtime = app.extensions["marketsync"]
    engine = runtime.engine
    env = SyncEnv("aws", engine, aws_emulator, runtime.adapter("aws"), runtime.settings)
    env.control("POST", "reset")
    setup_billing(engine)
    now = datetime.now(UTC)
    start = hour_floor(now) - timedelta(hours=3)

    acme, acme_customer = map_contract(env, start=start)
    _update(engine, acme, buyer_name="Acme Corp", buyer_email="ops@acme.test",
            custom_properties={"crm_id": "ACME-001", "region": "emea"},
            pricing={"currency": "USD", "dimensions": [{"name": "usage_cost", "unit_price": "0.01"}]})
    ingest(engine, acme_customer, 12345, start + timedelta(minutes=10))
    hourly.report_contract(engine, env.adapter, acme, start, now=now)
    ingest(engine, acme_customer, 2000, start + timedelta(minutes=70))
    hourly.report_contract(engine, env.adapter, acme, start + timedelta(hours=1), now=now)
    # The emulator refuses the credentials: a permanent error, the report is marked failed.
    ingest(engine, acme_customer, 3000, start + timedelta(minutes=130))
    env.control("POST", "options", {"bad_access_keys": ["sandbox"]})
    failed = hourly.report_contract(engine, env.adapter, acme, start + timedelta(hours=2), now=now)
    env.control("POST", "options", {"bad_access_keys": []})
    assert failed["sent"].get("failed") == 1, failed
    failed_id = next(r["id"] for r in _ledger(engine, acme) if r["status"] == "failed")

    canceled, canceled_customer = map_contract(env, start=start)
    _update(engine, canceled, buyer_name="Globex Ltd", status="canceled", canceled_at=now - timedelta(minutes=10),
            cancel_effective_at=now - timedelta(minutes=10))

    gateway = CoreBillingGateway(engine)
    initech = gateway.ensure_customer(external_customer_id="aws:initech", name="Initech", email="it@initech.test",
                                      currency="USD")
    spare = gateway.create_subscription(idempotency_key="spare-initech", customer_id=initech, plan_id="plan_sync",
                                        start=start, external_marketplace="aws", reporting_id="spare-initech")
    with Session(engine) as session:
        session.add(ContractRow(
            id="ctr_unmapped1", source="contracts", external_id="ext-initech", marketplace="aws", status="active",
            product_code="prod-unlisted", customer_aws_account_id="210987654321",
            cloud_identifiers={"product_code": "prod-unlisted", "customer_aws_account_id": "210987654321"},
            buyer_name="Initech", mapping_status="unmapped",
            mapping_reason="no listing for aws product 'prod-unlisted': create one (POST /v1/listings), then map the contract",
            created_at=now, updated_at=now))
        session.commit()
    taken = _subscription_of(engine, acme)
    return Seeded(acme=acme, unmapped="ctr_unmapped1", canceled=canceled, spare_subscription=spare,
                  taken_subscription=taken, failed_ledger_id=failed_id)


def _ledger(engine: Any, contract_id: str) -> list[dict[str, Any]]:
    from worker import ledger

    return ledger.ledger_rows(engine, contract_id)


def _subscription_of(engine: Any, contract_id: str) -> str:
    with Session(engine) as session:
        row = session.get(ContractRow, contract_id)
        assert row is not None and row.subscription_id
        return row.subscription_id


def csrf_of(html: str) -> str:
    """Return the CSRF token of the first form of a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


@pytest.fixture
def ops_client(client: Any) -> Any:
    """Return a test client logged in to the dashboard."""
    page = client.get("/ops/login")
    answer = client.post("/ops/login", data={"api_key": TEST_API_KEY, "csrf_token": csrf_of(page.get_data(as_text=True)),
                                             "next": "/ops/"})
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return client
