"""contracts.entitlements: what a contract with consumption includes per dimension, with effective instants

Revision ID: sync_0009
Revises: sync_0008
Create Date: 2026-12-07 22:00:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa

revision = 'sync_0009'
down_revision = 'sync_0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('entitlements', sa.JSON(), nullable=False, server_default='[]'))
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.alter_column('entitlements', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('contracts', schema=None) as batch_op:
        batch_op.drop_column('entitlements')
