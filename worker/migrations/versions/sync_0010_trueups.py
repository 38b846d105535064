"""trueups: manual adjustments applied from a CSV file, one row each, unique on the adjustment's key;
usage allocations: listings.usage_allocations, usage_ledger.allocations, contract_dimension_sync.allocated

Revision ID: sync_0010
Revises: sync_0008
Create Date: 2026-12-07 22:00:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'sync_0010'
down_revision = "sync_0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'trueups',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('contract_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column('dimension', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column('units', sa.Integer(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('ledger_id', sa.Integer(), nullable=False),
        sa.Column('file_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('line', sa.Integer(), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('key'),
    )
    with op.batch_alter_table('trueups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trueups_contract_id'), ['contract_id'], unique=False)
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('usage_allocations', sa.JSON(), nullable=True))
    with op.batch_alter_table('usage_ledger', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allocations', sa.JSON(), nullable=True))
    with op.batch_alter_table('contract_dimension_sync', schema=None) as batch_op:
        batch_op.add_column(sa.Column('allocated', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('contract_dimension_sync', schema=None) as batch_op:
        batch_op.drop_column('allocated')
    with op.batch_alter_table('usage_ledger', schema=None) as batch_op:
        batch_op.drop_column('allocations')
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.drop_column('usage_allocations')
    with op.batch_alter_table('trueups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trueups_contract_id'))
    op.drop_table('trueups')
