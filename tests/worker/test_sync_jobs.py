"""The sync jobs on a real Redis with a real RQ worker: fan-out, dedupe, flush scheduling, watchdog."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq.registry import ScheduledJobRegistry
from sqlmodel import Session

from config import Settings
from marketplaces.emulators.server import EmulatorServer
from tests.conftest import run_jobs
from tests.worker.sync_support import SyncEnv, ingest, map_contract, setup_billing, start_of_test_window
from worker import jobs, queueing, runtime as runtime_module
from worker.persistence.contracts import ContractRow
from worker.persistence.ledger import ContractSyncRow


@pytest.fixture
def aws_server(emulators: dict[str, EmulatorServer]) -> EmulatorServer:
    """The session's AWS emulator, reset."""
    return emulators["aws"]


@pytest.fixture
def env(settings: Settings, redis_conn, aws_server: EmulatorServer):  # type: ignore[no-untyped-def]
    """Install a runtime whose AWS adapter talks to the emulator; return the sync environment."""
    configured = settings.model_copy(update={"AWS_EMULATOR_PORT": aws_server.port, "EMULATOR_HOST": "127.0.0.1"})
    runtime = runtime_module.Runtime(configured)
    runtime_module.install(runtime)
    setup_billing(runtime.engine)
    environment = SyncEnv("aws", runtime.engine, aws_server, runtime.adapter("aws"), configured)
    yield environment, runtime
    runtime.close()


class _App:
    """The minimum of a Flask app that run_jobs needs."""

    def __init__(self, runtime):  # type: ignore[no-untyped-def]
        self.extensions = {"marketsync": runtime}


def test_fanout_reports_every_contract_once(env) -> None:  # type: ignore[no-untyped-def]
    """The hourly fan-out enqueues one job per contract; a second fan-out enqueues nothing."""
    environment, runtime = env
    start = start_of_test_window()
    for tokens in (1000, 2000, 3000):
        contract, customer = map_contract(environment, start=start)
        ingest(environment.engine, customer, tokens, start + timedelta(minutes=5))
    stamp = start.isoformat()
    assert jobs.run_hourly_sync(stamp) == {"enqueued": 3, "skipped": 0}
    assert jobs.run_hourly_sync(stamp) == {"enqueued": 0, "skipped": 3}
    run_jobs(_App(runtime))
    assert environment.totals() == 600


def test_cancellation_schedules_two_flushes(env) -> None:  # type: ignore[no-untyped-def]
    """A cancellation enqueues the final flush after the grace period (urgent), and a flush now when
    that leaves the final one an hour stamp inside AWS's window; together they report it all, once."""
    environment, runtime = env
    start = start_of_test_window()
    contract, customer = map_contract(environment, start=start)
    ingest(environment.engine, customer, 1500, start + timedelta(minutes=5))
    now = datetime.now(UTC)
    with Session(environment.engine) as session:
        row = session.get(ContractRow, contract)
        row.status, row.canceled_at, row.cancel_effective_at = "canceled", now, now
        session.add(row)
        session.commit()
    planned = queueing.schedule_flushes(runtime, contract, grace_seconds=600)
    urgent = runtime.queue("urgent")
    assert urgent.count == (1 if planned["flush_now"] else 0)
    assert f"flush-{contract}-final" in ScheduledJobRegistry(queue=urgent).get_job_ids()
    assert queueing.schedule_flushes(runtime, contract, grace_seconds=600)["scheduled"] is False  # once
    run_jobs(_App(runtime))
    jobs.flush_cancellation(contract, True)  # the final flush, as the scheduler runs it after the grace
    assert environment.totals() == 150


def test_watchdog_alerts_once(env) -> None:  # type: ignore[no-untyped-def]
    """A canceled contract near its deadline raises one alert (log, metric, flag)."""
    environment, runtime = env
    contract, _ = map_contract(environment, start=start_of_test_window())
    canceled = datetime.now(UTC) - timedelta(minutes=50)  # AWS: deadline in 10 minutes
    with Session(environment.engine) as session:
        row = session.get(ContractRow, contract)
        row.status, row.canceled_at, row.cancel_effective_at = "canceled", canceled, canceled
        session.add(row)
        session.commit()
    first = jobs.watch_deadlines()
    again = jobs.watch_deadlines()
    assert [a["contract_id"] for a in first] == [contract] and not first[0]["missed"]
    assert len(again) == 1
    assert int(runtime.redis.get("marketsync:metrics:deadline_alerts")) == 1
    with Session(environment.engine) as session:
        assert session.get(ContractSyncRow, contract).alerted_at is not None


def test_one_broken_contract_does_not_fail_its_chunk(env) -> None:  # type: ignore[no-untyped-def]
    """A contract that cannot be reported is skipped; the rest of its chunk is delivered."""
    environment, runtime = env
    start = start_of_test_window()
    good, good_customer = map_contract(environment, start=start)
    broken, broken_customer = map_contract(environment, start=start)
    ingest(environment.engine, good_customer, 1200, start + timedelta(minutes=5))
    ingest(environment.engine, broken_customer, 3400, start + timedelta(minutes=5))
    with Session(environment.engine) as session:
        row = session.get(ContractRow, broken)
        row.subscription_id = "sub_that_does_not_exist"
        session.add(row)
        session.commit()
    jobs.run_hourly_sync(start.isoformat())
    run_jobs(_App(runtime))
    assert environment.totals() == 120
    assert runtime.queue("sync").failed_job_registry.count == 0
