"""billing_events: usage fragments stored sparsely, with coverage spans instead of one row per bucket

Revision ID: billing_events_0004
Revises: billing_events_0003
Create Date: 2026-12-07 14:00:00

Fragments are a cache (docs/architecture.md §6): the old tables are dropped, not converted, and
the next reads rebuild what they need from the events.
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = "billing_events_0004"
down_revision = "billing_events_0003"
branch_labels = None
depends_on = None


def _fragments_table(key: tuple[str, ...], *extra: sa.Column) -> None:
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
        *extra,
        sa.Column("maximum", sa.Text(), nullable=True),
        sa.Column("latest_ts", sa.BigInteger(), nullable=True),
        sa.Column("latest_seq", sa.BigInteger(), nullable=True),
        sa.Column("latest_value", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint(*key),
    )


def upgrade() -> None:
    op.drop_table("usage_fragments")
    op.drop_table("usage_fragment_buckets")
    op.create_table(
        "usage_fragment_coverage",
        sa.Column("metric_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("group_by", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("lo", sa.BigInteger(), nullable=False),
        sa.Column("hi", sa.BigInteger(), nullable=False),
        sa.Column("computed_change", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("metric_id", "group_by", "size", "customer_id", "lo"),
    )
    # Time first: a window's rows are one range per bucket size, however long the history is.
    _fragments_table(("metric_id", "group_by", "size", "bucket", "customer_id", "group_key"),
                     sa.Column("total_units", sa.BigInteger(), nullable=False),
                     sa.Column("total_nanos", sa.BigInteger(), nullable=False))


def downgrade() -> None:
    op.drop_table("usage_fragments")
    op.drop_table("usage_fragment_coverage")
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
    _fragments_table(("metric_id", "group_by", "customer_id", "size", "bucket", "group_key"),
                     sa.Column("total", sa.Text(), nullable=False))
