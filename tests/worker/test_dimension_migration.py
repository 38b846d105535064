"""Migration sync_0005: counts already reported carry over to the listing's one dimension."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, text
from sqlmodel import Session, select

from tests.billing_core.test_migrations import empty_engine  # noqa: F401  (SQLite and PostgreSQL)
from worker import db
from worker.persistence.contracts import ListingRow
from worker.persistence.ledger import DimensionSyncRow


def test_reported_counts_move_to_the_listing_dimension(empty_engine: Engine) -> None:  # noqa: F811
    """A contract's units reported before sync_0005 count under its listing's dimension; listings keep one dimension."""
    db.upgrade(empty_engine, "sync_0004")
    now = datetime(2026, 11, 1, tzinfo=UTC)
    period = datetime(2026, 11, 1, tzinfo=UTC)
    with empty_engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO listings (id, marketplace, product_id, plan_id, name, billing_plan_id, dimension, unit_price, "
            "currency, close_rounding, include_fixed_fees, approve_entitlements, aws_legacy_identifiers, "
            "aws_concurrent_agreements, created_at, updated_at) VALUES ('lst_old', 'aws', 'prod-old', '', '', "
            "'plan_1', 'usage_fee', '0.01', 'USD', 'floor', false, true, true, false, :now, :now)"), {"now": now})
        for contract, listing in (("ctr_reported", "lst_old"), ("ctr_fresh", "lst_old"), ("ctr_unlisted", None)):
            conn.execute(text(
                "INSERT INTO contracts (id, source, external_id, marketplace, status, listing_id, cloud_identifiers, "
                "buyer_name, buyer_email, custom_properties, mapping_status, mapping_reason, created_at, updated_at) "
                "VALUES (:id, 'contracts', :id, 'aws', 'active', :listing, '{}', '', '', '{}', 'mapped', '', :now, "
                ":now)"), {"id": contract, "listing": listing, "now": now})
        conn.execute(text(
            "INSERT INTO contract_sync (contract_id, version, period_start, units_reported, over_reported, last_cost, "
            "last_units_total, last_outcome, last_error, unbillable_events) VALUES "
            "('ctr_reported', 7, :period, 1234, 3, '12.345', 1234, 'accepted', '', 0), "
            "('ctr_fresh', 0, NULL, 0, 0, '0', 0, '', '', 0), "
            "('ctr_unlisted', 1, :period, 5, 0, '0.05', 5, 'accepted', '', 0)"), {"period": period})

    db.upgrade(empty_engine)

    with Session(empty_engine) as session:
        rows = session.exec(select(DimensionSyncRow)).all()
        assert [(r.contract_id, r.dimension, r.units_reported, r.over_reported, r.last_cost, r.last_units_total)
                for r in rows] == [("ctr_reported", "usage_fee", 1234, 3, "12.345", 1234)]
        assert rows[0].period_start is not None and rows[0].period_start.replace(tzinfo=UTC) == period
        assert session.get(ListingRow, "lst_old").dimensions is None
