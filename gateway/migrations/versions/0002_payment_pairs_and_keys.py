"""Payments named by the pair (source, payment_id) in the ledger; who posted and reversed a payment; API keys
bound to payment sources.

Ledger entries of payments, reversals and repayments named their payment by the joined label
"source/payment_id", which two different payments can share ("col/x" + "y" and "col" + "x/y"). They get the
pair in two columns, filled here from the payments table for the entries written before.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _payment_of_entry(column: str) -> sa.TextClause:
    # The oldest payment of the entry's account whose label is the entry's reference.
    return sa.text(f"(SELECT p.{column} FROM payments p WHERE p.account_id = ledger_entries.account_id "
                   "AND p.source || '/' || p.payment_id = ledger_entries.reference "
                   "ORDER BY p.received_at LIMIT 1)")


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries") as batch:
        batch.add_column(sa.Column("payment_source", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("payment_id", sa.String(length=128), nullable=True))
        batch.drop_index("ix_ledger_reference")
    op.execute(sa.text(f"UPDATE ledger_entries SET payment_source = {_payment_of_entry('source')}, "
                       f"payment_id = {_payment_of_entry('payment_id')} "
                       "WHERE kind IN ('payment', 'reversal', 'repayment') AND reference LIKE '%/%'"))
    op.create_index("ix_ledger_payment", "ledger_entries", ["payment_source", "payment_id"], unique=False,
                    sqlite_where=sa.text("payment_source IS NOT NULL"),
                    postgresql_where=sa.text("payment_source IS NOT NULL"))
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("recorded_by", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("reversed_by", sa.String(length=100), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("sources", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("sources")
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("reversed_by")
        batch.drop_column("recorded_by")
    op.drop_index("ix_ledger_payment", table_name="ledger_entries")
    with op.batch_alter_table("ledger_entries") as batch:
        batch.drop_column("payment_id")
        batch.drop_column("payment_source")
        batch.create_index("ix_ledger_reference", ["kind", "reference"], unique=False)
