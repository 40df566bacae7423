"""The fleet as data: each account's and each meter's configuration in its row (it was the settings file's),
a status (accounts open or closed, meters active or retired), the revision of the catalog change that last
touched the row, and at most one active meter per unit id (Modbus) or address (DL/T 645) on a bus.

Rows made by an older version carry no configuration yet (an empty tariff, an empty bus): the settings file's
``accounts:`` and ``meters:`` fill them in at the next start (``gateway.service.fleet``).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from gateway.adapters.tables import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ACTIVE_UNIT = "status = 'active' AND unit_id IS NOT NULL"
_ACTIVE_ADDRESS = "status = 'active' AND address IS NOT NULL"


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it): a batch would copy the tables, which the rows that refer to them forbid
    op.add_column("accounts", sa.Column("status", sa.String(16), nullable=False, server_default="open"))
    op.add_column("accounts", sa.Column("tariff", sa.String(64), nullable=False, server_default=""))
    op.add_column("accounts", sa.Column("tariff_next", sa.String(64), nullable=True))
    op.add_column("accounts", sa.Column("tariff_next_at", UtcDateTime(timezone=True), nullable=True))
    op.add_column("accounts", sa.Column("warning1_fen", sa.BigInteger, nullable=False, server_default="2000"))
    op.add_column("accounts", sa.Column("warning2_fen", sa.BigInteger, nullable=False, server_default="500"))
    op.add_column("accounts", sa.Column("overdraft_fen", sa.BigInteger, nullable=True))
    op.add_column("accounts", sa.Column("reconnect_min_topup_fen", sa.BigInteger, nullable=False, server_default="100"))
    op.add_column("accounts", sa.Column("credit_class", sa.String(16), nullable=False, server_default=""))
    op.add_column("accounts", sa.Column("protected", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("accounts", sa.Column("contacts", sa.JSON, nullable=True))
    op.add_column("accounts", sa.Column("opening_balance_fen", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("accounts", sa.Column("opened_at", UtcDateTime(timezone=True), nullable=True))
    op.add_column("accounts", sa.Column("closed_at", UtcDateTime(timezone=True), nullable=True))
    op.add_column("accounts", sa.Column("config_rev", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("meters", sa.Column("status", sa.String(16), nullable=False, server_default="active"))
    op.add_column("meters", sa.Column("bus_id", sa.String(64), nullable=False, server_default=""))
    op.add_column("meters", sa.Column("unit_id", sa.Integer, nullable=True))
    op.add_column("meters", sa.Column("address", sa.String(12), nullable=True))
    op.add_column("meters", sa.Column("model", sa.String(64), nullable=False, server_default="generic-prepaid"))
    op.add_column("meters", sa.Column("groups", sa.JSON, nullable=True))
    op.add_column("meters", sa.Column("poll_interval_s", sa.Float, nullable=False, server_default="60"))
    op.add_column("meters", sa.Column("max_power_w", sa.Integer, nullable=False, server_default="60000"))
    op.add_column("meters", sa.Column("retired_at", UtcDateTime(timezone=True), nullable=True))
    op.add_column("meters", sa.Column("config_rev", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_accounts_config_rev", "accounts", ["config_rev"])
    op.create_index("ix_meters_config_rev", "meters", ["config_rev"])
    op.create_index("ix_meters_account", "meters", ["account_id"])
    op.create_index("ux_meters_bus_unit", "meters", ["bus_id", "unit_id"], unique=True,
                    sqlite_where=sa.text(_ACTIVE_UNIT), postgresql_where=sa.text(_ACTIVE_UNIT))
    op.create_index("ux_meters_bus_address", "meters", ["bus_id", "address"], unique=True,
                    sqlite_where=sa.text(_ACTIVE_ADDRESS), postgresql_where=sa.text(_ACTIVE_ADDRESS))


def downgrade() -> None:
    for name in ("ux_meters_bus_address", "ux_meters_bus_unit", "ix_meters_account", "ix_meters_config_rev"):
        op.drop_index(name, table_name="meters")
    op.drop_index("ix_accounts_config_rev", table_name="accounts")
    with op.batch_alter_table("meters") as batch:
        for name in ("config_rev", "retired_at", "max_power_w", "poll_interval_s", "groups", "model", "address",
                     "unit_id", "bus_id", "status"):
            batch.drop_column(name)
    with op.batch_alter_table("accounts") as batch:
        for name in ("config_rev", "closed_at", "opened_at", "opening_balance_fen", "contacts", "protected",
                     "credit_class", "reconnect_min_topup_fen", "overdraft_fen", "warning2_fen", "warning1_fen",
                     "tariff_next_at", "tariff_next", "tariff", "status"):
            batch.drop_column(name)
