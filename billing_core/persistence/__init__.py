"""Persistence of the billing core: the only modules with ``table=True`` SQLModel rows.

Their schema is created by the Alembic revisions in ``MIGRATIONS_DIR`` (branches
``billing_events`` and ``billing_plans``); the application's Alembic environment applies them
together with its own (``worker.db.upgrade``).
"""

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
