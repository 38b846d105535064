"""The database layer: SQLite pragmas, PostgreSQL via psycopg 3, migrations matching the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlmodel import SQLModel

from worker import db


def test_sqlite_wal_and_foreign_keys(sqlite_engine: Engine) -> None:
    """SQLite connections run in WAL mode with foreign keys on."""
    with sqlite_engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_ping_both(any_engine: Engine) -> None:
    """The database answers on SQLite and on PostgreSQL."""
    db.ping(any_engine)


def test_migrations_match_models(any_engine: Engine) -> None:
    """After `upgrade heads` the schema equals the SQLModel metadata (no missing migration)."""
    db.load_models()
    with any_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), SQLModel.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_upgrade_is_idempotent(any_engine: Engine) -> None:
    """Running the migrations again changes nothing."""
    before = db.current_revisions(any_engine)
    db.upgrade(any_engine)
    assert db.current_revisions(any_engine) == before


def test_session_scope_rolls_back(engine: Engine) -> None:
    """A failing unit of work leaves nothing behind."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
    with pytest.raises(RuntimeError):
        with db.session_scope(engine) as session:
            session.execute(text("INSERT INTO probe (id) VALUES (1)"))
            raise RuntimeError("abort")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM probe")).scalar() == 0
