"""billing_core's Alembic branches live in billing_core/migrations, with the revision ids they had
under worker/migrations, so a database built by the previous layout upgrades in place."""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from billing_core import SqlCustomerRepository, SqlEventStore
from worker import db

ROOT = Path(__file__).resolve().parents[2]
# The last commit whose migrations all lived in worker/migrations/versions.
PREVIOUS_LAYOUT = "a67da12"
HEADS = {"billing_events_0004", "billing_plans_0004", "sync_0010"}
PREVIOUS_HEADS = {"billing_events_0002", "billing_plans_0001", "sync_0003"}  # the layout of git a67da12
NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


@pytest.fixture
def previous_layout(tmp_path: Path) -> Path:
    """Write worker/migrations as it was at PREVIOUS_LAYOUT into a temporary directory."""
    try:
        names = _git("ls-tree", "-r", "--name-only", PREVIOUS_LAYOUT, "--", "worker/migrations").decode().split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"no git history with {PREVIOUS_LAYOUT} here")
    for name in names:
        target = tmp_path / Path(name).relative_to("worker")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_git("show", f"{PREVIOUS_LAYOUT}:{name}"))
    return tmp_path / "migrations"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """Return an engine on an empty database (no tables): a SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        engine = db.build_engine(f"sqlite:///{tmp_path / 'previous.db'}")
        yield engine
        engine.dispose()
        return
    import psycopg

    from tests.conftest import _pg_admin_url

    admin = make_url(_pg_admin_url().replace("postgresql://", "postgresql+psycopg://", 1))
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"marketsync_layout_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL NOT TESTED: {exc}")
    engine = db.build_engine(admin.set(database=name).render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _upgrade_with(script_location: Path, engine: Engine) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("version_locations", str(script_location / "versions"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")


def test_revision_ids_and_branches_are_kept() -> None:
    """The moved revisions keep their ids, branch labels and places in their branches."""
    script = ScriptDirectory.from_config(db.alembic_config())
    revisions = {r.revision: (r.down_revision, tuple(sorted(r.branch_labels))) for r in script.walk_revisions()}
    assert set(script.get_heads()) == HEADS
    assert revisions["billing_events_0001"] == (None, ("billing_events",))
    assert revisions["billing_events_0002"] == ("billing_events_0001", ("billing_events",))
    assert revisions["billing_events_0003"] == ("billing_events_0002", ("billing_events",))
    assert revisions["billing_events_0004"] == ("billing_events_0003", ("billing_events",))
    assert revisions["billing_plans_0001"] == (None, ("billing_plans",))
    assert Path(script.get_revision("billing_events_0001").path).parent == db.BILLING_MIGRATIONS_DIR


def test_database_from_the_previous_layout_upgrades_with_its_data(previous_layout: Path, empty_engine: Engine) -> None:
    """A database migrated by worker/migrations alone is at the new heads already, and keeps its rows."""
    _upgrade_with(previous_layout, empty_engine)
    assert db.current_revisions(empty_engine) == PREVIOUS_HEADS
    with empty_engine.begin() as conn:  # rows as that layout wrote them (its tables only)
        conn.execute(text("INSERT INTO customers (id, name, email, timezone, metadata, created_at) "
                          "VALUES ('c1', 'Ada', 'ada@example.com', 'UTC', '{}', :now)"), {"now": NOW})
        conn.execute(text("INSERT INTO events (idempotency_key, version, event_name, customer_id, ts, properties, state) "
                          "VALUES ('e1', 0, 'api_call', 'c1', :ts, :p, 0)"),
                     {"ts": 1796040000000000, "p": '{"tokens": 1.5, "model": "m1"}'})

    db.upgrade(empty_engine)

    assert db.current_revisions(empty_engine) == HEADS
    with db.session_scope(empty_engine) as session:
        assert SqlCustomerRepository(session).get("c1").name == "Ada"
        assert SqlEventStore(session).current("e1").properties == {"tokens": Decimal("1.5"), "model": "m1"}
    db.load_models()
    with empty_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), SQLModel.metadata)
    assert diff == []
