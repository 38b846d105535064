"""AWS listing flags: legacy CustomerIdentifier metering, Concurrent Agreements (no ProductCode)

Listings that exist when this runs were metered with whatever identifiers their contracts had
(the legacy CustomerIdentifier when known), so they are marked legacy and keep working; the
column's default is then dropped: new listings say what they are (the model's default is false).

Revision ID: sync_0004
Revises: sync_0003
Create Date: 2026-11-22 09:00:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa

revision = 'sync_0004'
down_revision = 'sync_0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('aws_legacy_identifiers', sa.Boolean(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('aws_concurrent_agreements', sa.Boolean(), nullable=False, server_default='0'))
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.alter_column('aws_legacy_identifiers', server_default=None)
        batch_op.alter_column('aws_concurrent_agreements', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('listings', schema=None) as batch_op:
        batch_op.drop_column('aws_concurrent_agreements')
        batch_op.drop_column('aws_legacy_identifiers')
