"""Initial schema: accounts, meters, readings, ledger, payments, commands, outbox, api keys, audit log.

Revision ID: 0001
Revises:
"""

from alembic import op

from gateway.adapters.tables import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The first revision creates the tables as gateway/adapters/tables.py declares them at this revision; later
# revisions must spell out their changes with op.* calls instead.
_TABLES = ["accounts", "meters", "readings", "ledger_entries", "payments", "commands", "outbox", "site_state",
           "api_keys", "audit_log"]


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind, tables=[metadata.tables[name] for name in _TABLES])


def downgrade() -> None:
    bind = op.get_bind()
    metadata.drop_all(bind, tables=[metadata.tables[name] for name in reversed(_TABLES)])
