"""billing_plans: alerts, their firings once per threshold and period, the evaluator's position

Revision ID: billing_plans_0004
Revises: billing_plans_0003
Create Date: 2026-12-07 22:00:01
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = "billing_plans_0004"
down_revision = "billing_plans_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("thresholds", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("subscription_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("plan_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("plan_version", sa.Integer(), nullable=True),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("metric_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("created_at", "subscription_id", "plan_id", "customer_id"):
        op.create_index(f"ix_alerts_{column}", "alerts", [column])
    op.create_table(
        "alert_firings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("alert_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("subscription_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("threshold", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("value", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("emitted", sa.Boolean(), nullable=False),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("alert_id", "subscription_id", "period_start", "threshold", name="uq_alert_firings_once"),
    )
    op.create_index("ix_alert_firings_subscription_id", "alert_firings", ["subscription_id"])
    op.create_table(
        "alert_cursor",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("alert_cursor")
    op.drop_table("alert_firings")
    op.drop_table("alerts")
