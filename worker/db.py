"""Database plumbing: engines from settings, sessions, and Alembic migrations.

Nothing here runs at import time: entry points call ``build_engine(settings)`` and keep the
engine on the app (``app.extensions``) or the worker runtime.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

from billing_core import MIGRATIONS_DIR as BILLING_MIGRATIONS_DIR

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Each package keeps its own Alembic branches; one environment (worker/migrations/env.py) applies all.
VERSION_LOCATIONS = (MIGRATIONS_DIR / "versions", BILLING_MIGRATIONS_DIR)
MODEL_PACKAGES = ("billing_core.persistence", "worker.persistence")


def build_engine(url: str, *, pool_size: int = 5) -> Engine:
    """Build an engine for ``url``: SQLite with WAL and foreign keys, or PostgreSQL via psycopg 3."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the web and worker processes read while one of them writes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """Yield a session that commits on success and rolls back on error."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def load_models() -> None:
    """Import every persistence module so its tables join ``SQLModel.metadata``."""
    for package_name in MODEL_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{info.name}")


def alembic_config(url: str | None = None):  # type: ignore[no-untyped-def]
    """Return an Alembic ``Config`` for the project's migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(str(path) for path in VERSION_LOCATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Apply migrations up to ``revision`` (default: every branch head)."""
    from alembic import command

    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revisions(engine: Engine) -> set[str]:
    """Return the revisions the database is at."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def ping(engine: Engine) -> None:
    """Run a trivial query; raise if the database is unreachable."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
