"""billing_events: backfills (pending, reflected, reverted) and the events they replace

Revision ID: billing_events_0002
Revises: billing_events_0001
Create Date: 2026-11-21 12:30:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = "billing_events_0002"
down_revision = "billing_events_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfill_replacements",
        sa.Column("backfill_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("backfill_id", "event_seq"),
    )
    op.create_table(
        "backfills",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("timeframe_start", sa.BigInteger(), nullable=False),
        sa.Column("timeframe_end", sa.BigInteger(), nullable=False),
        sa.Column("replace_existing_events", sa.Boolean(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("events_ingested", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("close_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reverted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_backfills_created_at", "backfills", ["created_at"], unique=False)
    op.add_column("events", sa.Column("backfill_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    op.create_index(
        "ix_events_backfill",
        "events",
        ["backfill_id"],
        unique=False,
        sqlite_where=sa.text("backfill_id IS NOT NULL"),
        postgresql_where=sa.text("backfill_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_events_backfill", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("backfill_id")
    op.drop_index("ix_backfills_created_at", table_name="backfills")
    op.drop_table("backfills")
    op.drop_table("backfill_replacements")
