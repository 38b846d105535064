"""Fixtures of the fault suite: a restartable private Redis, a migrated database, the gated
emulators and a fleet of real worker processes 27 mapped contracts per marketplace.

``db_url`` is SQLite unless a test parametrizes it indirectly with ``BOTH_DATABASES``
(PostgreSQL where one answers; that half is skipped, saying so, where none does).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from redis import Redis
from rq import Retry

from config import Settings
from tests.conftest import TEST_API_KEY, TEST_WEBHOOK_SECRET
from tests.faults.harness import Book, Fleet, Marketplaces, Recovery, assert_exact, populate, settle
from tests.worker.sync_support import start_of_test_window
from worker import jobs, queueing, runtime as runtime_module
from worker.redis_server import PrivateRedis

WORKERS = 2
PER_MARKETPLACE = 27  # more than one batch of 25, so report jobs send full batches and drains the rest
BOTH_DATABASES = pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "contracts_per_marketplace(n): how many contracts the bed maps on each emulator")


@pytest.fixture(scope="session")
def markets() -> Iterator[Marketplaces]:
    """Serve the three gated emulators for the whole suite (reset before each test)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access line per emulator call otherwise
    servers = Marketplaces()
    yield servers
    servers.stop()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """Start a private redis-server on a short unix socket path (the test may restart it)."""
    directory = Path(tempfile.mkdtemp(prefix="msf-", dir="/tmp"))
    server = PrivateRedis(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def db_url(request: pytest.FixtureRequest) -> str:
    """Return a migrated database URL: SQLite by default, PostgreSQL when parametrized so."""
    if getattr(request, "param", "sqlite") == "postgres":
        return request.getfixturevalue("pg_url")
    return request.getfixturevalue("sqlite_url")


@dataclass
class Bed:
    """Everything one fault test drives: the database, Redis, emulators, workers and the books."""

    runtime: runtime_module.Runtime
    redis_server: PrivateRedis
    markets: Marketplaces
    fleet: Fleet
    book: Book
    seed: int

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return self.runtime.engine

    @property
    def redis(self) -> Redis:
        return self.runtime.redis

    def fanout(self) -> dict[str, int]:
        """Run the hourly fan-out for the book's hour from this process (the cron's job)."""
        return jobs.run_hourly_sync(self.book.stamp.isoformat())

    def settle(self, **options: float) -> Recovery:
        return settle(self.engine, self.redis, self.fleet, **options)  # type: ignore[arg-type]

    def assert_exact(self) -> dict[str, int]:
        return assert_exact(self.engine, self.markets, self.book, context=f"(seed {self.seed})")


@pytest.fixture
def bed(request: pytest.FixtureRequest, db_url: str, private_redis: PrivateRedis, markets: Marketplaces, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Bed]:
    """Start two workers, map the contracts and ingest their usage (nothing enqueued yet)."""
    markets.reset()
    # RQ's retry intervals are minutes long; retries here requeue at once (no scheduler wait).
    monkeypatch.setattr(queueing, "REPORT_RETRY", Retry(max=5, interval=[0, 0, 0, 0, 0]))
    # The fan-out of the suite's 81 contracts goes in several report jobs, as thousands of
    # contracts do in production, so a worker killed in one job leaves the others running.
    monkeypatch.setattr(queueing, "SYNC_CHUNK", 30)
    environment = {**markets.environment(), "DATABASE_URL": db_url}
    settings = Settings.from_env({**environment, "REDIS_URL": private_redis.url, "DATA_DIR": str(tmp_path / "data"),
                                  "LOG_LEVEL": "WARNING", "API_KEYS": TEST_API_KEY,
                                  "WEBHOOK_SECRETS": TEST_WEBHOOK_SECRET})
    previous = runtime_module._PROCESS_RUNTIME
    runtime = runtime_module.Runtime(settings)
    runtime_module.install(runtime)
    workdir = tmp_path / "workers"
    workdir.mkdir()
    fleet = Fleet(redis_url=private_redis.url, environment=environment, workdir=workdir)
    try:
        # Two workers start (and import the sync code, via an empty sweep) while the contracts are mapped.
        fleet.start(WORKERS)
        for n in range(WORKERS):
            runtime.queue("sync").enqueue(jobs.sweep_ledger, job_id=f"warm-up-{n}")
        seed = int(os.environ.get("FAULTS_SEED") or random.randrange(1 << 30))
        marker = request.node.get_closest_marker("contracts_per_marketplace")
        per_marketplace = marker.args[0] if marker else PER_MARKETPLACE
        book = populate(runtime.engine, markets, per_marketplace=per_marketplace, start=start_of_test_window(),
                        seed=seed)
        yield Bed(runtime, private_redis, markets, fleet, book, seed)
    finally:
        fleet.stop()
        markets.reset()
        runtime.close()
        runtime_module._PROCESS_RUNTIME = previous
