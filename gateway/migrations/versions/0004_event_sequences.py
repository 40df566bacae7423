"""Events out: the sequence number of the last event published on each topic (per entity: an account's
balance, a meter's state, a command...), so consumers can keep order and drop duplicates.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("event_sequences",
                    sa.Column("topic", sa.String(length=200), nullable=False),
                    sa.Column("seq", sa.BigInteger(), nullable=False),
                    sa.PrimaryKeyConstraint("topic"))


def downgrade() -> None:
    op.drop_table("event_sequences")
