"""Shared fixtures: settings, a migrated SQLite file, PostgreSQL when one answers, a real Redis.

- SQLite: the migrations run once per session into a template file; each test gets a copy.
- PostgreSQL: ``TEST_DATABASE_URL``, else a server on 127.0.0.1:5432 (user postgres) if one
  answers; a private database is created for the session and dropped at the end. Tests
  marked ``postgres`` (via ``any_engine``) run on both; without a server that half is skipped
  and the skip says why.
- Redis: ``TEST_REDIS_URL`` (or ``REDIS_URL``) if it answers — its database is FLUSHED by
  the tests — else a private ``redis-server`` started for the session.
- Emulators: one of each marketplace for the session (``emulator_servers``); ``emulators``
  resets all three (state, faults, clock, options) through their shared control API.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from config import Settings
from worker import db
from worker.redis_server import PrivateRedis

if TYPE_CHECKING:
    from marketplaces.emulators.server import EmulatorServer

TEST_DB = os.environ.get("MARKETSYNC_TEST_DB", "sqlite")
if TEST_DB not in ("sqlite", "postgres"):
    raise pytest.UsageError("MARKETSYNC_TEST_DB must be sqlite or postgres")
TEST_API_KEY = "test-api-key-0123456789"
TEST_WEBHOOK_SECRET = "whsec_dGVzdC13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5"


# --- SQLite ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db-template") / "template.db"
    engine = db.build_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    with engine.connect() as conn:
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """Return the URL of a fresh, migrated SQLite file for this test."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    path = data_dir / "marketsync.db"
    shutil.copyfile(_sqlite_template, path)
    return f"sqlite:///{path}"


def _engine_at(url: str) -> Iterator[Engine]:
    """The one way tests get an engine: built like the app builds it, disposed after the test."""
    eng = db.build_engine(url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    """Return an engine on a fresh, migrated SQLite file (whatever MARKETSYNC_TEST_DB says)."""
    yield from _engine_at(sqlite_url)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str:
    """Return the test database: SQLite, or PostgreSQL when MARKETSYNC_TEST_DB=postgres.

    `.ci/run` runs the whole suite once on each.
    """
    if TEST_DB == "postgres":
        return request.getfixturevalue("pg_url")
    return request.getfixturevalue("sqlite_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """Return an engine on a fresh, migrated test database (see ``database_url``)."""
    yield from _engine_at(database_url)


# --- PostgreSQL ----------------------------------------------------------------------------------

def _pg_admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def _pg_database() -> Iterator[str]:
    import psycopg

    admin = make_url(_pg_admin_url().replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"marketsync_test_{uuid.uuid4().hex[:10]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL NOT TESTED: no server answers at {admin.host}:{admin.port} ({exc})")
    url = admin.set(database=name).render_as_string(hide_password=False)
    engine = db.build_engine(url)
    db.upgrade(engine)
    engine.dispose()
    yield url
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_all(engine: Engine) -> None:
    from sqlmodel import SQLModel

    db.load_models()
    tables = [t.name for t in SQLModel.metadata.sorted_tables]
    if tables:
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))


@pytest.fixture
def pg_url(_pg_database: str) -> Iterator[str]:
    """Return the URL of the session's PostgreSQL database, emptied after the test."""
    yield _pg_database
    engine = db.build_engine(_pg_database)
    _truncate_all(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest) -> str:
    """Return a migrated database URL: SQLite, then PostgreSQL (the test runs on both)."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def any_engine(any_url: str) -> Iterator[Engine]:
    """Return an engine on SQLite, then on PostgreSQL (the test runs on both)."""
    yield from _engine_at(any_url)


# --- Redis ---------------------------------------------------------------------------------------

def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _worker_database(url: str) -> str:
    """Give each pytest-xdist worker its own database of a shared Redis (gw0 -> 1, gw1 -> 2 ...)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{int(worker[2:]) + 1}"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return a real Redis URL: TEST_REDIS_URL / REDIS_URL if reachable, else a private server."""
    for name in ("TEST_REDIS_URL", "REDIS_URL"):
        url = os.environ.get(name)
        if url and _reachable(url):
            yield _worker_database(url)
            return
    server = PrivateRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    """Return a connection to an empty Redis database (flushed before and after the test)."""
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


# --- Settings and the app ------------------------------------------------------------------------

@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    """Return settings for a test: temp data dir, migrated SQLite file, real Redis, known keys."""
    return Settings.from_env({
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "API_KEYS": TEST_API_KEY,
        "WEBHOOK_SECRETS": TEST_WEBHOOK_SECRET,
        "LOG_LEVEL": "WARNING",
    })


@pytest.fixture
def app(settings: Settings, redis_conn: redis.Redis):  # type: ignore[no-untyped-def]
    """Return the web app built on the test settings."""
    from webhooks import create_app

    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["marketsync"].close()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    """Return a Flask test client."""
    return app.test_client()


@pytest.fixture
def auth_headers() -> dict[str, str]:
    """Return headers carrying a valid API key."""
    return {"Authorization": f"Bearer {TEST_API_KEY}"}


# --- marketplace emulators ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def emulator_servers() -> Iterator[dict[str, "EmulatorServer"]]:
    """One running emulator per marketplace (by name) for the whole session; reset before use."""
    from marketplaces.emulators import EMULATORS
    from marketplaces.emulators.server import EmulatorServer

    servers = {name: EmulatorServer(factory()).start() for name, factory in EMULATORS.items()}
    yield servers
    for server in servers.values():
        server.stop()


def reset_emulator(server: "EmulatorServer", **options: object) -> "EmulatorServer":
    """Reset one emulator (``options`` replace its creation options until the next reset)."""
    import requests

    answer = requests.post(f"{server.url}/_emulator/reset", json={"options": options}, timeout=10)
    assert answer.status_code == 200, answer.text
    return server


@pytest.fixture
def emulators(emulator_servers: dict[str, "EmulatorServer"]) -> dict[str, "EmulatorServer"]:
    """The session's emulators, each reset to empty: no state, faults, fixed clock or receiver."""
    for server in emulator_servers.values():
        reset_emulator(server)
    return emulator_servers


# --- live servers ---------------------------------------------------------------------------------

class LiveServer:
    """The web app served on a loopback port in a thread (real HTTP, real SDK clients)."""

    def __init__(self, app):  # type: ignore[no-untyped-def]
        from werkzeug.serving import make_server

        self.app = app
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        import threading

        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def live_server(app):  # type: ignore[no-untyped-def]
    """Serve the test app over real HTTP on a loopback port; ``.url`` is its base URL."""
    server = LiveServer(app)
    yield server
    server.stop()


def burst_worker_class():  # type: ignore[no-untyped-def]
    """Return a real RQ ``SimpleWorker`` that skips the command channel (tests send no commands).

    RQ's pub/sub thread blocks in a read of up to 60 s, and a burst worker's shutdown waits for
    it: listening for commands nobody sends made some tests stall for a minute.
    """
    from rq import SimpleWorker

    class BurstWorker(SimpleWorker):
        def subscribe(self) -> None:
            return None

        def unsubscribe(self) -> None:
            return None

    return BurstWorker


def run_jobs(app) -> None:  # type: ignore[no-untyped-def]
    """Process every queued job of the app's Redis in this process (a real RQ worker, burst mode)."""
    from worker import runtime as runtime_module

    runtime = app.extensions["marketsync"]
    runtime_module.install(runtime)
    queues = [runtime.queue(name) for name in runtime_module.QUEUE_NAMES]
    settle_jobs(runtime, queues, burst_worker_class())


def settle_jobs(runtime, queues, worker_class) -> None:  # type: ignore[no-untyped-def]
    """Run burst workers until no drain signal is pending and the queues are empty.

    Receivers signal the drain job from a background thread just after answering, and a job
    can make an emulator send a notification that enqueues more: run until it all settles.
    """
    from worker.queueing import alert_signal, drain_signal, webhook_signal

    signals = [drain_signal(runtime), alert_signal(runtime), webhook_signal(runtime)]
    for _ in range(20):
        for signal in signals:
            signal.wait()
        worker_class(queues, connection=runtime.redis).work(burst=True)
        if all(signal.wait(0) for signal in signals) and not any(q.count for q in queues):
            return
