"""Migration sync_0006: ledger rows keep everything they had and gain a unit price (unknown) and no hold."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, text
from sqlmodel import Session, select

from tests.billing_core.test_migrations import empty_engine  # noqa: F401  (SQLite and PostgreSQL)
from worker import db
from worker.persistence.ledger import LedgerRow


def test_existing_reports_gain_an_unknown_unit_price_and_no_hold(empty_engine: Engine) -> None:  # noqa: F811
    """A report written before sync_0006 is unchanged after it, with no unit price yet and not held."""
    db.upgrade(empty_engine, "sync_0005")
    hour = datetime(2026, 11, 21, 10, tzinfo=UTC)
    with empty_engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO usage_ledger (key, contract_id, marketplace, product, dimension, hour, period_start, "
            "quantity, kind, cost_to_date, units_total, status, detail, attempts, created_at) VALUES "
            "('ctr_old:usage_fee:2026-11-21T10', 'ctr_old', 'aws', 'prod-old', 'usage_fee', :hour, :hour, 432, "
            "'hourly', '4.321', 432, 'pending', '', 0, :hour)"), {"hour": hour})

    db.upgrade(empty_engine)

    with Session(empty_engine) as session:
        [row] = session.exec(select(LedgerRow)).all()
        assert (row.key, row.quantity, row.status, row.unit_price, row.held_until) == (
            "ctr_old:usage_fee:2026-11-21T10", 432, "pending", None, None)
