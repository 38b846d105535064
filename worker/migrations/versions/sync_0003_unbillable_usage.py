"""unbillable usage after a contract's cancellation

Revision ID: sync_0003
Revises: sync_0002
Create Date: 2026-11-21 12:45:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel  # noqa: F401

revision = 'sync_0003'
down_revision = 'sync_0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('contract_sync', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unbillable_events', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('unbillable_checked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('contract_sync', schema=None) as batch_op:
        batch_op.drop_column('unbillable_checked_at')
        batch_op.drop_column('unbillable_events')
