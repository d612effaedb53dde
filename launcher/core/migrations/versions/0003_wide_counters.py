"""64-bit limits and usage counters: token budgets and daily token sums pass 2**31

Revision ID: 0003
Revises: 0002
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

KEY_LIMITS = ('rpm', 'tpm', 'max_parallel', 'daily_tokens', 'monthly_tokens', 'daily_audio_seconds')
DAILY_COUNTERS = ('requests', 'errors', 'estimated_requests', 'prompt_tokens', 'completion_tokens',
                  'reasoning_tokens')


def _retype(old: type, new: type) -> None:
    # SQLite's INTEGER is already 64-bit: rebuilding its tables would change nothing.
    if op.get_bind().dialect.name == 'sqlite':
        return
    for table, columns in (('api_keys', KEY_LIMITS), ('usage_daily', DAILY_COUNTERS)):
        for column in columns:
            op.alter_column(table, column, type_=new(), existing_type=old())


def upgrade() -> None:
    _retype(sa.Integer, sa.BigInteger)


def downgrade() -> None:
    _retype(sa.BigInteger, sa.Integer)
