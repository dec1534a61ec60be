"""approvals: a request remembers the bearer token it was made with, so a revoked token stops its run

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 21:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('approval_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('requester_token', sa.String(length=120), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('approval_requests', schema=None) as batch_op:
        batch_op.drop_column('requester_token')
