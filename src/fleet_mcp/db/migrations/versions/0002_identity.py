"""identity: roles held per token; room for scheme-prefixed (keyed) argument digests

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 19:30:00

Every existing token gets the roles its principal holds now, which is exactly what it could do before, so
nobody gains or loses anything by the upgrade. `args_digest` columns grow to 100 characters for
`hmac-sha256:<64 hex>`; existing rows keep their plain digests (the audit chain covers the stored strings).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('roles', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    op.execute("UPDATE api_tokens SET roles = (SELECT principals.roles FROM principals "
               "WHERE principals.id = api_tokens.principal_id)")
    for table in ('audit_log', 'approval_requests'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column('args_digest', existing_type=sa.String(length=64), type_=sa.String(length=100),
                                  existing_nullable=False)


def downgrade() -> None:
    for table in ('audit_log', 'approval_requests'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column('args_digest', existing_type=sa.String(length=100), type_=sa.String(length=64),
                                  existing_nullable=False)
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('roles')
