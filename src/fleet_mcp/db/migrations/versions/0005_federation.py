"""federation: per-side suspensions, remote peers on other instances

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-03 19:20:00

A suspension belongs to the side that made it. Peers suspended before this revision do not say which side
suspended them, so both sides are recorded as holding it: each must resume (the safe reading).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import fleet_mcp.db.base

revision = '0005'
down_revision = '0002'
branch_labels = None
depends_on = None

UNKNOWN = "unknown (suspended before per-side suspensions)"


def upgrade() -> None:
    op.create_table('federation_remotes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('peer_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('local_account_id', sa.Integer(), nullable=False),
    sa.Column('remote_instance_id', sa.String(length=64), nullable=True),
    sa.Column('remote_account_name', sa.String(length=120), nullable=True),
    sa.Column('remote_domain', sa.String(length=253), nullable=False),
    sa.Column('remote_endpoint', sa.String(length=500), nullable=True),
    sa.Column('remote_peer_id', sa.Integer(), nullable=True),
    sa.Column('remote_ca_pin', sa.String(length=64), nullable=True),
    sa.Column('remote_instance_ca_pem', sa.Text(), nullable=True),
    sa.Column('inbound_channel_fp', sa.String(length=64), nullable=True),
    sa.Column('outbound_channel_cert_pem', sa.Text(), nullable=True),
    sa.Column('outbound_channel_key_ref', sa.String(length=120), nullable=True),
    sa.Column('claimed_at', fleet_mcp.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('bundle_sequence', sa.Integer(), nullable=False),
    sa.Column('bundle_fetched_at', fleet_mcp.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('refresh_hint', sa.Integer(), nullable=False),
    sa.Column('remote_status', sa.String(length=16), nullable=True),
    sa.Column('last_contact_at', fleet_mcp.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.Column('last_error_kind', sa.String(length=40), nullable=True),
    sa.Column('pending_action', sa.String(length=16), nullable=True),
    sa.Column('pending_reason', sa.String(length=500), nullable=True),
    sa.Column('created_at', fleet_mcp.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', fleet_mcp.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['local_account_id'], ['accounts.id'], name=op.f('fk_federation_remotes_local_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['peer_id'], ['federation_peers.id'], name=op.f('fk_federation_remotes_peer_id_federation_peers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_federation_remotes')),
    sa.UniqueConstraint('inbound_channel_fp', name=op.f('uq_federation_remotes_inbound_channel_fp')),
    sa.UniqueConstraint('peer_id', name=op.f('uq_federation_remotes_peer_id'))
    )
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
    op.drop_table('federation_remotes')
    with op.batch_alter_table('federation_peers', schema=None) as batch_op:
        batch_op.drop_column('remote_suspended_by')
        batch_op.drop_column('local_suspended_by')
