"""Expired and held reports: usage_ledger.unit_price (an expired report's amount) and usage_ledger.held_until

Rows written before this revision have no unit price; the sender fills it from the contract's
listing when such a row expires.

Revision ID: sync_0006
Revises: sync_0005
Create Date: 2026-12-07 16:40:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'sync_0006'
down_revision = 'sync_0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('usage_ledger', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unit_price', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('held_until', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('usage_ledger', schema=None) as batch_op:
        batch_op.drop_column('held_until')
        batch_op.drop_column('unit_price')
