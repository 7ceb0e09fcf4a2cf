"""Per-route request and token counts (served exchanges are stored only as a sample).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 15:50:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('route_counts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('route', sa.String(length=16), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('stored', sa.Integer(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.Float(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('route_counts', schema=None) as batch_op:
        batch_op.create_index('ix_route_counts_model_time', ['model', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('route_counts', schema=None) as batch_op:
        batch_op.drop_index('ix_route_counts_model_time')
    op.drop_table('route_counts')
