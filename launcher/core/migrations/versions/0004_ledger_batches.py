"""ledger batches: the id of every usage batch written, so a retried batch is written once

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ledger_batches',
    sa.Column('batch_id', sa.String(length=100), nullable=False),
    sa.Column('written_at', sa.DateTime(), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('batch_id')
    )
    op.create_index('ix_ledger_batches_written_at', 'ledger_batches', ['written_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_ledger_batches_written_at', table_name='ledger_batches')
    op.drop_table('ledger_batches')
