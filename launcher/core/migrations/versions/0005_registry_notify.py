"""registry notify: on PostgreSQL, every change of keys, deployments or targets is announced

Revision ID: 0005
Revises: 0004

A statement-level trigger on each table sends NOTIFY on the channel routers LISTEN on, delivered
when the writing transaction commits; routers then refresh their snapshot at once instead of at
their next periodic refresh. A trigger catches every writer (CLI, supervisor, registration,
another router). SQLite has no NOTIFY: routers there rely on the periodic refresh.
"""

from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

CHANNEL = 'llm_launch_registry'  # router/upstream/registry_notify.py listens on it
TABLES = ('api_keys', 'deployments', 'model_targets')


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(f"""
        CREATE FUNCTION llm_launch_registry_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END $$""")
    for table in TABLES:
        op.execute(f"""
            CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION llm_launch_registry_notify()""")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify ON {table}")
    op.execute("DROP FUNCTION IF EXISTS llm_launch_registry_notify()")
