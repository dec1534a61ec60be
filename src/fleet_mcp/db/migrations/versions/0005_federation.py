"""federation: per-side suspensions

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-03 19:20:00

A suspension belongs to the side that made it. Peers suspended before this revision do not say which side
suspended them, so both sides are recorded as holding it: each must resume (the safe reading).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0001'
branch_labels = None
depends_on = None

UNKNOWN = "unknown (suspended before per-side suspensions)"


def upgrade() -> None:
    with op.batch_alter_table('federation_peers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('local_suspended_by', sa.String(length=250), nullable=True))
        batch_op.add_column(sa.Column('remote_suspended_by', sa.String(length=250), nullable=True))
    peers = sa.table(
        'federation_peers',
        sa.column('status', sa.String),
        sa.column('local_suspended_by', sa.String),
        sa.column('remote_suspended_by', sa.String),
    )
    op.execute(
        peers.update()
        .where(peers.c.status == 'suspended')
        .values(local_suspended_by=UNKNOWN, remote_suspended_by=UNKNOWN)
    )


def downgrade() -> None:
    with op.batch_alter_table('federation_peers', schema=None) as batch_op:
        batch_op.drop_column('remote_suspended_by')
        batch_op.drop_column('local_suspended_by')
