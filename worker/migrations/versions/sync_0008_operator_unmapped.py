"""contracts.operator_unmapped: a contract an operator unmapped is not mapped again by a lifecycle event

Revision ID: sync_0008
Revises: sync_0007
Create Date: 2026-12-07 20:30:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa

revision = 'sync_0008'
down_revision = 'sync_0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('operator_unmapped', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.drop_column('operator_unmapped')
