"""billing_events: usage fragments, their computed buckets, and the usage change log

Revision ID: billing_events_0003
Revises: billing_events_0002
Create Date: 2026-12-07 12:30:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = "billing_events_0003"
down_revision = "billing_events_0002"
branch_labels = None
depends_on = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_changes",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("external_customer_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("event_name", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("ts_start", sa.BigInteger(), nullable=True),
        sa.Column("ts_end", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_usage_changes_customer", "usage_changes", ["customer_id", "id"], unique=False)
    op.create_index("ix_usage_changes_external", "usage_changes", ["external_customer_id", "id"], unique=False)
    op.create_table(
        "usage_fragment_buckets",
        sa.Column("metric_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("group_by", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("computed_change", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("metric_id", "group_by", "customer_id", "size", "bucket"),
    )
    op.create_table(
        "usage_fragments",
        sa.Column("metric_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("group_by", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("group_key", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("with_value", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Text(), nullable=False),
        sa.Column("maximum", sa.Text(), nullable=True),
        sa.Column("latest_ts", sa.BigInteger(), nullable=True),
        sa.Column("latest_seq", sa.BigInteger(), nullable=True),
        sa.Column("latest_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("metric_id", "group_by", "customer_id", "size", "bucket", "group_key"),
    )


def downgrade() -> None:
    op.drop_table("usage_fragments")
    op.drop_table("usage_fragment_buckets")
    op.drop_index("ix_usage_changes_external", table_name="usage_changes")
    op.drop_index("ix_usage_changes_customer", table_name="usage_changes")
    op.drop_table("usage_changes")
