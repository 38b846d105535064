"""billing_events: customers, events (append-only, versioned) and metrics

Revision ID: billing_events_0001
Revises:
Create Date: 2026-11-21 12:10:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel
from sqlalchemy.dialects import postgresql

revision = "billing_events_0001"
down_revision = None
branch_labels = ("billing_events",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("external_customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=True),
        sa.Column("timezone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_customer_id", name="uq_customers_external_customer_id"),
    )
    op.create_index("ix_customers_created_at", "customers", ["created_at"], unique=False)
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("event_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("external_customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("properties", sa.Text().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("state", sa.SmallInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("idempotency_key", "version", name="uq_events_key_version"),
    )
    op.create_index("ix_events_customer_name_ts", "events", ["customer_id", "event_name", "ts"], unique=False)
    op.create_index(
        "ix_events_unresolved_name_ts",
        "events",
        ["external_customer_id", "event_name", "ts"],
        unique=False,
        sqlite_where=sa.text("customer_id IS NULL"),
        postgresql_where=sa.text("customer_id IS NULL"),
    )
    op.create_table(
        "metrics",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("item_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("sql", sa.Text(), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_metrics_created_at", "metrics", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_metrics_created_at", table_name="metrics")
    op.drop_table("metrics")
    op.drop_index("ix_events_unresolved_name_ts", table_name="events")
    op.drop_index("ix_events_customer_name_ts", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_customers_created_at", table_name="customers")
    op.drop_table("customers")
