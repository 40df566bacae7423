"""The dashboard's partial indexes (``gateway.adapters.dashboard_rows``): the few accounts the overview looks for
(disconnected, closed, with a deferred disconnect, connected at or below the final warning level) and the meters
whose relay is not simply closed, each an index of those rows only, so the overview reads them without a pass over
100,000 accounts, and a write to any other row costs the check of the condition alone.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# (name, table, columns, condition): the same as gateway/adapters/tables.py declares
INDEXES = (
    ("ix_accounts_off", "accounts", ["id"], "supply = 'disconnected'"),
    ("ix_accounts_closed", "accounts", ["id"], "status = 'closed'"),
    ("ix_accounts_deferred", "accounts", ["id"], "deferred_reason <> ''"),
    ("ix_accounts_low", "accounts", ["deferred_until", "balance_fen", "id"],
     "balance_fen <= warning2_fen AND supply = 'connected' AND status = 'open'"),
    ("ix_meters_unusual", "meters", ["account_id"], "status = 'active' AND (relay <> 'closed' OR relay_fault <> '')"),
)


def upgrade() -> None:
    for name, table, columns, where in INDEXES:
        op.create_index(name, table, columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def downgrade() -> None:
    for name, table, _, _ in INDEXES:
        op.drop_index(name, table_name=table)
