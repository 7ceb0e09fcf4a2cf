"""Index pairs by their served and shadow exchanges (retention deletes, served-only queries).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 14:56:53.570024
"""
from __future__ import annotations

from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.create_index('ix_pairs_served_id', ['served_id'], unique=False)
        batch_op.create_index('ix_pairs_shadow_id', ['shadow_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('pairs', schema=None) as batch_op:
        batch_op.drop_index('ix_pairs_shadow_id')
        batch_op.drop_index('ix_pairs_served_id')

