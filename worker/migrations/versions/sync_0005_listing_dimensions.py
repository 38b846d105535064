"""Several dimensions per listing: listings.dimensions, and units reported per contract and dimension

Every contract that has reported keeps its count under its listing's one dimension (the only
one listings had), so nothing it reported is counted again.

Revision ID: sync_0005
Revises: sync_0004
Create Date: 2026-12-07 16:10:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import sqlmodel

revision = 'sync_0005'
down_revision = 'sync_0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dimensions', sa.JSON(), nullable=True))
    op.create_table('contract_dimension_sync',
    sa.Column('contract_id', sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
    sa.Column('dimension', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('period_start', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('units_reported', sa.Integer(), nullable=False),
    sa.Column('over_reported', sa.Integer(), nullable=False),
    sa.Column('last_cost', sa.Text(), nullable=False),
    sa.Column('last_units_total', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('contract_id', 'dimension')
    )
    op.execute(
        "INSERT INTO contract_dimension_sync (contract_id, dimension, period_start, units_reported, "
        "over_reported, last_cost, last_units_total) "
        "SELECT s.contract_id, l.dimension, s.period_start, s.units_reported, s.over_reported, s.last_cost, "
        "s.last_units_total FROM contract_sync s JOIN contracts c ON c.id = s.contract_id "
        "JOIN listings l ON l.id = c.listing_id WHERE s.period_start IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table('contract_dimension_sync')
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.drop_column('dimensions')
