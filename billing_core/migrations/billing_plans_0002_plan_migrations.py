"""billing_plans: plan migrations and their per-subscription outcomes

Revision ID: billing_plans_0002
Revises: billing_plans_0001
Create Date: 2026-12-07 22:00:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = "billing_plans_0002"
down_revision = "billing_plans_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("plan_migrations",
    sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column("plan_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column("to_version", sa.Integer(), nullable=False),
    sa.Column("from_versions", sa.Text(), nullable=False),
    sa.Column("effective_time", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column("overrides", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], ),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("plan_migrations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_migrations_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_plan_migrations_plan_id"), ["plan_id"], unique=False)

    op.create_table("plan_migration_outcomes",
    sa.Column("migration_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column("subscription_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column("effective_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("reasons", sa.Text(), nullable=False),
    sa.Column("undo", sa.Text(), nullable=True),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(["migration_id"], ["plan_migrations.id"], ),
    sa.PrimaryKeyConstraint("migration_id", "subscription_id")
    )
    with op.batch_alter_table("plan_migration_outcomes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plan_migration_outcomes_subscription_id"), ["subscription_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("plan_migration_outcomes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_migration_outcomes_subscription_id"))
    op.drop_table("plan_migration_outcomes")
    with op.batch_alter_table("plan_migrations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plan_migrations_plan_id"))
        batch_op.drop_index(batch_op.f("ix_plan_migrations_created_at"))
    op.drop_table("plan_migrations")
