"""The cost memo: a contract's cost to date carried from one hourly run to the next when nothing changed

Revision ID: sync_0007
Revises: sync_0006
Create Date: 2026-12-07 19:40:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'sync_0007'
down_revision = 'sync_0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'contract_cost_memo',
        sa.Column('contract_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column('basis', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('position', sa.BigInteger(), nullable=False),
        sa.Column('window_end', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('event_names', sa.Text(), nullable=False),
        sa.Column('costs', sa.Text(), nullable=False),
        sa.Column('computed_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('contract_id'),
    )


def downgrade() -> None:
    op.drop_table('contract_cost_memo')
