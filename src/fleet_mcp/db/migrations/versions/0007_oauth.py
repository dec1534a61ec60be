"""oauth identities: which principal an identity provider's subject is

Revision ID: 0007
Revises: 0003
Create Date: 2026-12-03 19:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import fleet_mcp.db.base


revision = '0007'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oauth_identities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('issuer', sa.String(length=500), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('principal_id', sa.Integer(), nullable=False),
    sa.Column('created_at', fleet_mcp.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', fleet_mcp.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], name=op.f('fk_oauth_identities_account_id_accounts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['principal_id'], ['principals.id'], name=op.f('fk_oauth_identities_principal_id_principals'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_oauth_identities')),
    sa.UniqueConstraint('issuer', 'subject', 'account_id', name=op.f('uq_oauth_identities_issuer_subject_account_id')),
    sa.UniqueConstraint('principal_id', name=op.f('uq_oauth_identities_principal_id'))
    )


def downgrade() -> None:
    op.drop_table('oauth_identities')
