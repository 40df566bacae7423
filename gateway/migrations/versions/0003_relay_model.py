"""Relay commands as an explicit state machine: what a command's decision rests on, when its attempt went out and
when it may be tried again; a meter's relay fault (disconnect_failed / reconnect_failed).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from gateway.adapters.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.add_column(sa.Column("basis_at", UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("sent_at", UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("not_before", UtcDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("meters") as batch:
        batch.add_column(sa.Column("relay_fault", sa.String(length=24), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("meters") as batch:
        batch.drop_column("relay_fault")
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("not_before")
        batch.drop_column("sent_at")
        batch.drop_column("basis_at")
