"""federation: channel certificates renew over the channel; the issuer keeps the previous fingerprint until
the holder first uses the renewed one

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 20:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('federation_remotes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_inbound_channel_fp', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('federation_remotes', schema=None) as batch_op:
        batch_op.drop_column('previous_inbound_channel_fp')
