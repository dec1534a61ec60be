"""vault: a rotation job records the key version it intends to rotate to, and the approval it ran under

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-03 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rotation_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('approval_id', sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('rotation_jobs', schema=None) as batch_op:
        batch_op.drop_column('approval_id')
        batch_op.drop_column('target_version')
