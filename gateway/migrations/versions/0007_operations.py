"""The operations surface: alarms as records (raised, acknowledged, resolved), reading timeliness per bus and day
(抄表成功率), and the indexes the lists and reports filter on (audit log, payments by day, commands by time,
accounts by balance).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from gateway.adapters.tables import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_UNRESOLVED = "state <> 'resolved'"


def upgrade() -> None:
    op.create_table(
        "alarms",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("meter_id", sa.String(64), nullable=True),
        sa.Column("account_id", sa.String(64), nullable=True),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("raised_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("times", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("acknowledged_at", UtcDateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(100), nullable=True),
        sa.Column("ack_reason", sa.String(500), nullable=True),
        sa.Column("resolved_at", UtcDateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(100), nullable=True),
        sa.Column("resolve_reason", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ux_alarms_unresolved", "alarms", ["kind", "subject"], unique=True,
                    sqlite_where=sa.text(_UNRESOLVED), postgresql_where=sa.text(_UNRESOLVED))
    op.create_index("ix_alarms_state", "alarms", ["state", "id"])
    op.create_index("ix_alarms_meter", "alarms", ["meter_id", "id"])
    op.create_index("ix_alarms_account", "alarms", ["account_id", "id"])
    op.create_table(
        "reading_days",
        sa.Column("bus_id", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("meters", sa.Integer(), nullable=False),
        sa.Column("read", sa.Integer(), nullable=False),
        sa.Column("on_time", sa.Integer(), nullable=False),
        sa.Column("polls_ok", sa.BigInteger(), nullable=False),
        sa.Column("polls_failed", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("bus_id", "day"),
    )
    op.create_index("ix_audit_target", "audit_log", ["target", "id"])
    op.create_index("ix_audit_actor", "audit_log", ["actor", "id"])
    op.create_index("ix_audit_at", "audit_log", ["at"])
    op.create_index("ix_audit_action", "audit_log", ["action", "at"])
    op.create_index("ix_payments_received", "payments", ["received_at"])
    op.create_index("ix_commands_created", "commands", ["created_at"])
    op.create_index("ix_accounts_balance", "accounts", ["balance_fen"])


def downgrade() -> None:
    for index, table in (("ix_accounts_balance", "accounts"), ("ix_commands_created", "commands"),
                         ("ix_payments_received", "payments"), ("ix_audit_at", "audit_log"),
                         ("ix_audit_action", "audit_log"),
                         ("ix_audit_actor", "audit_log"), ("ix_audit_target", "audit_log")):
        op.drop_index(index, table_name=table)
    op.drop_table("reading_days")
    op.drop_table("alarms")
