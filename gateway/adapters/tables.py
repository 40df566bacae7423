"""The database schema (SQLAlchemy Core). Alembic migrations in gateway/migrations create it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

metadata = sa.MetaData()


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in and out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: times are stored in UTC and must carry a zone")
        if value.tzinfo is not dt.UTC:
            value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    # balance, supply and the deferral are columns for queries; the engine's whole state is the JSON document
    # (gateway.domain.state), written in the same UPDATE.
    sa.Column("balance_fen", sa.BigInteger, nullable=False),
    sa.Column("supply", sa.String(16), nullable=False),
    sa.Column("deferred_reason", sa.String(32), nullable=False, server_default=""),
    sa.Column("deferred_until", UtcDateTime, nullable=True),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),  # +1 on every change
    sa.Column("updated_at", UtcDateTime, nullable=False),
    # the account's configuration (gateway.service.fleet): changed through the API, the CLI or the settings' seed
    sa.Column("status", sa.String(16), nullable=False, server_default="open"),  # open | closed
    sa.Column("tariff", sa.String(64), nullable=False, server_default=""),  # "": not configured yet (pre-0006 row)
    sa.Column("tariff_next", sa.String(64), nullable=True),  # a tariff change, from tariff_next_at
    sa.Column("tariff_next_at", UtcDateTime, nullable=True),
    sa.Column("warning1_fen", sa.BigInteger, nullable=False, server_default="2000"),
    sa.Column("warning2_fen", sa.BigInteger, nullable=False, server_default="500"),
    sa.Column("overdraft_fen", sa.BigInteger, nullable=True),  # null: the credit class's
    sa.Column("reconnect_min_topup_fen", sa.BigInteger, nullable=False, server_default="100"),
    sa.Column("credit_class", sa.String(16), nullable=False, server_default=""),
    sa.Column("protected", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("contacts", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("opening_balance_fen", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("opened_at", UtcDateTime, nullable=True),
    sa.Column("closed_at", UtcDateTime, nullable=True),
    sa.Column("config_rev", sa.BigInteger, nullable=False, server_default="0"),  # the catalog change that set it
    sa.Index("ix_accounts_config_rev", "config_rev"),
)

meters = sa.Table(
    "meters", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("relay", sa.String(16), nullable=False, server_default="unknown"),  # open, closed, armed, unknown
    # "", or disconnect_failed / reconnect_failed: the last relay command of the meter failed
    sa.Column("relay_fault", sa.String(24), nullable=False, server_default=""),
    sa.Column("health", sa.String(16), nullable=False, server_default="unknown"),
    sa.Column("last_success_at", UtcDateTime, nullable=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.String(500), nullable=True),
    # the meter's configuration (gateway.service.fleet)
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),  # active | retired
    sa.Column("bus_id", sa.String(64), nullable=False, server_default=""),  # "": not configured yet (pre-0006 row)
    sa.Column("unit_id", sa.Integer, nullable=True),  # Modbus
    sa.Column("address", sa.String(12), nullable=True),  # DL/T 645, 12 digits
    sa.Column("model", sa.String(64), nullable=False, server_default="generic-prepaid"),
    sa.Column("groups", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("poll_interval_s", sa.Float, nullable=False, server_default="60"),
    sa.Column("max_power_w", sa.Integer, nullable=False, server_default="60000"),
    sa.Column("retired_at", UtcDateTime, nullable=True),
    sa.Column("config_rev", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_meters_config_rev", "config_rev"),
    sa.Index("ix_meters_account", "account_id"),
    # one active meter per unit id or address on a bus
    sa.Index("ux_meters_bus_unit", "bus_id", "unit_id", unique=True,
             sqlite_where=sa.text("status = 'active' AND unit_id IS NOT NULL"),
             postgresql_where=sa.text("status = 'active' AND unit_id IS NOT NULL")),
    sa.Index("ux_meters_bus_address", "bus_id", "address", unique=True,
             sqlite_where=sa.text("status = 'active' AND address IS NOT NULL"),
             postgresql_where=sa.text("status = 'active' AND address IS NOT NULL")),
)

readings = sa.Table(
    "readings", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
    sa.Column("taken_at", UtcDateTime, nullable=False),
    sa.Column("energy_wh", sa.BigInteger, nullable=False),
    sa.Column("power_w", sa.Integer, nullable=True),
    sa.Column("voltage_v", sa.Float, nullable=True),
    sa.Column("current_a", sa.Float, nullable=True),
    sa.Column("relay", sa.String(16), nullable=True),
    sa.Column("billed", sa.Boolean, nullable=False),
    sa.Index("ix_readings_meter_taken", "meter_id", "taken_at"),
)

ledger = sa.Table(
    "ledger_entries", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),  # opening, payment, reversal, charge, adjustment, ...
    sa.Column("amount_fen", sa.BigInteger, nullable=False),  # signed: credit > 0, debit < 0
    sa.Column("balance_after_fen", sa.BigInteger, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("reference", sa.String(200), nullable=True),  # a label: "source/payment_id", meter id, ...
    # payments, reversals and their repayments: the payment, named by the pair (never by the joined label)
    sa.Column("payment_source", sa.String(64), nullable=True),
    sa.Column("payment_id", sa.String(128), nullable=True),
    sa.Column("meter_id", sa.String(64), nullable=True),
    sa.Column("energy_wh", sa.BigInteger, nullable=True),  # charges: energy billed by this entry
    sa.Column("reading_wh", sa.BigInteger, nullable=True),  # charges: the cumulative reading billed up to
    sa.Column("period", sa.String(16), nullable=True),  # charges: billing period
    sa.Column("detail", sa.String(500), nullable=True),
    sa.Index("ix_ledger_account", "account_id", "id"),
    sa.Index("ix_ledger_payment", "payment_source", "payment_id", sqlite_where=sa.text("payment_source IS NOT NULL"),
             postgresql_where=sa.text("payment_source IS NOT NULL")),
)

payments = sa.Table(
    "payments", metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("payment_id", sa.String(128), primary_key=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("amount_fen", sa.BigInteger, nullable=False),
    sa.Column("paid_at", UtcDateTime, nullable=True),
    sa.Column("channel", sa.String(64), nullable=True),
    sa.Column("balance_after_fen", sa.BigInteger, nullable=False),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("reversed_at", UtcDateTime, nullable=True),
    sa.Column("reversal_reason", sa.String(500), nullable=True),
    sa.Column("recorded_by", sa.String(100), nullable=True),  # the API key that posted it
    sa.Column("reversed_by", sa.String(100), nullable=True),  # the API key that reversed it
)

commands = sa.Table(
    "commands", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("meter_id", sa.String(64), sa.ForeignKey("meters.id"), nullable=False),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("origin", sa.String(16), nullable=False),  # automatic, operator, billing
    sa.Column("operator", sa.String(100), nullable=True),
    sa.Column("reason", sa.String(500), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False),
    sa.Column("basis_at", UtcDateTime, nullable=True),  # the reading (or request) the decision rests on
    sa.Column("sent_at", UtcDateTime, nullable=True),  # when the current attempt went on the wire
    sa.Column("not_before", UtcDateTime, nullable=True),  # a retry's backoff
    sa.Index("ix_commands_meter_state", "meter_id", "state"),
)

outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(200), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("published_at", UtcDateTime, nullable=True),  # MQTT (the outbox relay)
    sa.Column("noticed_at", UtcDateTime, nullable=True),  # looked at by the notice planner (notices on)
)

notices = sa.Table(
    "notices", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("dedup_key", sa.String(300), nullable=False, unique=True),  # event, kind, contact: made once
    sa.Column("event_id", sa.BigInteger, nullable=False),  # the outbox event it tells of
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("contact", sa.String(100), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # customer | staff
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("recipient", sa.String(200), nullable=False),
    sa.Column("language", sa.String(16), nullable=False),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("final", sa.Boolean, nullable=False),  # the final warning whose delivery starts the notice period
    sa.Column("state", sa.String(16), nullable=False),  # pending | delivered | failed (a dead letter)
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UtcDateTime, nullable=True),  # pending: not before (backoff, quiet hours)
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("issued_at", UtcDateTime, nullable=False),  # the event's time
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("delivered_at", UtcDateTime, nullable=True),
    sa.Index("ix_notices_state_next", "state", "next_attempt_at"),
    sa.Index("ix_notices_account", "account_id", "id"),
)

event_sequences = sa.Table(
    "event_sequences", metadata,
    sa.Column("topic", sa.String(200), primary_key=True),  # an outbox topic: one entity's stream of events
    sa.Column("seq", sa.BigInteger, nullable=False),  # the sequence number of its last published event
)

site_state = sa.Table(
    "site_state", metadata,
    sa.Column("name", sa.String(64), primary_key=True),  # "rate_limiter": the recent automatic disconnects
    sa.Column("state", sa.JSON, nullable=False),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("sources", sa.JSON(none_as_null=True), nullable=True),  # billing keys: the payment sources it may post; null: any
)

audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=True),
    sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),  # None is SQL NULL, not JSON null
)

# --- the operations surface (migration 0007) ------------------------------------------------------------------
alarms = sa.Table(
    "alarms", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    # meter_offline, meter_stale, reading_quarantined, command_failed, disconnect_refused, notice_failed, tamper,
    # account_unreadable, outbox_overflow (gateway.service.alarms)
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),  # what it is about: a meter, command, notice, account id
    sa.Column("meter_id", sa.String(64), nullable=True),
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("severity", sa.String(16), nullable=False),  # critical | major | minor
    sa.Column("state", sa.String(16), nullable=False),  # open | acknowledged | resolved
    sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("raised_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),  # raised again while not resolved: counted here
    sa.Column("times", sa.Integer, nullable=False, server_default="1"),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("event_id", sa.BigInteger, nullable=True),  # the outbox event that raised it
    sa.Column("acknowledged_at", UtcDateTime, nullable=True),
    sa.Column("acknowledged_by", sa.String(100), nullable=True),
    sa.Column("ack_reason", sa.String(500), nullable=True),
    sa.Column("resolved_at", UtcDateTime, nullable=True),
    sa.Column("resolved_by", sa.String(100), nullable=True),  # "gateway": the cause ended
    sa.Column("resolve_reason", sa.String(500), nullable=True),
    # one alarm per cause until it is resolved
    sa.Index("ux_alarms_unresolved", "kind", "subject", unique=True,
             sqlite_where=sa.text("state <> 'resolved'"), postgresql_where=sa.text("state <> 'resolved'")),
    sa.Index("ix_alarms_state", "state", "id"),
    sa.Index("ix_alarms_meter", "meter_id", "id"),
    sa.Index("ix_alarms_account", "account_id", "id"),
)

reading_days = sa.Table(
    "reading_days", metadata,  # reading timeliness (抄表成功率) per bus and site-local day
    sa.Column("bus_id", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),  # YYYY-MM-DD in the site's time zone
    sa.Column("meters", sa.Integer, nullable=False),  # meters on the bus that day
    sa.Column("read", sa.Integer, nullable=False),  # meters with at least one reading that day
    sa.Column("on_time", sa.Integer, nullable=False),  # meters never without a reading for longer than allowed
    sa.Column("polls_ok", sa.BigInteger, nullable=False),
    sa.Column("polls_failed", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

# lists and reports filter on these
sa.Index("ix_audit_target", audit_log.c.target, audit_log.c.id)
sa.Index("ix_audit_actor", audit_log.c.actor, audit_log.c.id)
sa.Index("ix_audit_at", audit_log.c.at)
sa.Index("ix_audit_action", audit_log.c.action, audit_log.c.at)
sa.Index("ix_payments_received", payments.c.received_at)
sa.Index("ix_commands_created", commands.c.created_at)
sa.Index("ix_accounts_balance", accounts.c.balance_fen)

# the dashboard's partial indexes (migration 0008): the few rows the overview looks for, each of them only
for _name, _columns, _where in (
        ("ix_accounts_off", [accounts.c.id], "supply = 'disconnected'"),
        ("ix_accounts_closed", [accounts.c.id], "status = 'closed'"),
        ("ix_accounts_deferred", [accounts.c.id], "deferred_reason <> ''"),
        ("ix_accounts_low", [accounts.c.deferred_until, accounts.c.balance_fen, accounts.c.id],
         "balance_fen <= warning2_fen AND supply = 'connected' AND status = 'open'"),
        ("ix_meters_unusual", [meters.c.account_id], "status = 'active' AND (relay <> 'closed' OR relay_fault <> '')")):
    sa.Index(_name, *_columns, sqlite_where=sa.text(_where), postgresql_where=sa.text(_where))
del _name, _columns, _where
