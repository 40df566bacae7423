"""Read models: what the API shows of accounts, meters, readings, the ledger and relay commands.

The routes call ``Views`` and turn its dicts (keyed as the API's response schemas) into responses; they never
touch storage or the writer. ``Views`` puts together the stored rows (read through the ``ReadStore`` port, whose
SQL lives in ``gateway.adapters.read_store``), the catalog and what the writer holds in memory (a reading that
changed nothing is not stored, yet it is the meter's latest).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from drivers.base import Reading
from gateway.domain.money import format_fen
from gateway.domain.relay import supply_state
from gateway.service.account_cache import domain_account
from gateway.service.catalog import Catalog
from gateway.service.commands import CommandRecord
from gateway.service.errors import UnknownAccount, UnknownCommand, UnknownMeter, UnknownNotice
from gateway.service.ports import NoticeRecord, PaymentKey

__all__ = ["AccountRows", "MeterRows", "ReadStore", "Views", "command_shape"]

Row = Any  # a stored row: its columns as attributes


class AccountRows:
    """An account's row and its meters' relay columns, read in one transaction."""

    __slots__ = ("account", "meters")

    def __init__(self, account: Row | None, meters: list[Row]) -> None:
        self.account = account
        self.meters = meters  # id, relay, relay_fault


class MeterRows:
    """A meter's row, its newest stored reading and its account's stored state, read in one transaction."""

    __slots__ = ("account_state", "meter", "newest")

    def __init__(self, meter: Row | None, newest: Row | None, account_state: Mapping[str, Any] | None) -> None:
        self.meter = meter
        self.newest = newest
        self.account_state = account_state


class ReadStore(abc.ABC):
    """The port the read models read storage through."""

    @abc.abstractmethod
    async def account(self, account_id: str) -> AccountRows: ...

    @abc.abstractmethod
    async def meter(self, meter_id: str, account_id: str) -> MeterRows: ...

    @abc.abstractmethod
    async def ledger(self, account_id: str, *, limit: int, before_id: int | None) -> list[Row]:
        """Ledger rows of the account, newest (highest id) first."""

    @abc.abstractmethod
    async def readings(self, meter_id: str, *, limit: int, before_id: int | None) -> list[Row]:
        """Stored readings of the meter, newest (highest id) first."""

    @abc.abstractmethod
    async def command(self, command_id: str) -> CommandRecord | None: ...

    @abc.abstractmethod
    async def notice(self, notice_id: int) -> NoticeRecord | None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise unless storage answers."""

    def stored_payments(self, keys: set[PaymentKey]) -> dict[PaymentKey, dict[str, Any]] | None:
        """The stored payments of ``keys`` (as ``PaymentRepository.get`` gives them), read at once, without a
        hand-over to a database thread, by a store that can (SQLite's direct reads); None: read them in a unit
        of work. The writer's lookups of a batch's payment ids (``gateway.service.batch``)."""
        return None


def command_shape(record: CommandRecord) -> dict[str, Any]:
    """A relay command as the API shows it."""
    return {"id": record.id, "meter_id": record.meter_id, "action": record.action, "origin": record.origin,
            "operator": record.operator, "reason": record.reason, "state": record.state,
            "attempts": record.attempts, "last_error": record.last_error, "created_at": record.created_at,
            "updated_at": record.updated_at, "expires_at": record.expires_at}


def notice_shape(record: NoticeRecord) -> dict[str, Any]:
    """A notice as the API shows it: the recipient's address masked but for its last four characters."""
    to = record.recipient
    masked = "*" * max(len(to) - 4, 0) + to[-4:] if len(to) > 4 else "*" * len(to)
    return {"id": record.id, "kind": record.kind, "account_id": record.account_id, "contact": record.contact,
            "role": record.role, "channel": record.channel, "to": masked, "language": record.language,
            "text": record.text, "final_warning": record.final, "state": record.state, "attempts": record.attempts,
            "next_attempt_at": record.next_attempt_at, "last_error": record.last_error,
            "issued_at": record.issued_at, "created_at": record.created_at, "updated_at": record.updated_at,
            "delivered_at": record.delivered_at}


def _reading_shape(row: Row, *, billed: bool) -> dict[str, Any]:
    relay = row.relay
    return {"taken_at": row.taken_at, "energy_wh": row.energy_wh, "power_w": row.power_w,
            "voltage_v": row.voltage_v, "current_a": row.current_a,
            "relay": relay if relay is None or isinstance(relay, str) else relay.value, "billed": billed}


def _page(data: list[dict[str, Any]], limit: int, key: str) -> Any:
    return data[-1][key] if len(data) == limit else None


class Views:
    def __init__(self, store: ReadStore, catalog: Catalog, unstored: Mapping[str, Reading]) -> None:
        self.store = store
        self.catalog = catalog
        self.unstored = unstored  # per meter, the newest reading that changed nothing and was not stored

    async def account(self, account_id: str) -> dict[str, Any]:
        """Balance, supply (wished and confirmed), credit level, meters and the guardrails in force.
        ``AccountUnreadable`` when the stored state can't be converted."""
        spec = self.catalog.accounts.get(account_id)
        rows = await self.store.account(account_id) if spec is not None else None
        if rows is None or spec is None or rows.account is None:
            raise UnknownAccount(f"no account {account_id!r}")
        row = rows.account
        account = domain_account(self.catalog, row.id, row.state)
        assert account is not None
        return {
            "id": row.id, "balance": format_fen(row.balance_fen),
            "state": supply_state(row.supply, [(m.relay, m.relay_fault) for m in rows.meters]),
            "supply": row.supply, "relays": {m.id: m.relay for m in rows.meters}, "credit": account.credit_state(),
            "meters": list(spec.meter_ids), "protected": account.is_protected,
            "disconnect_deferred_because": row.deferred_reason or None, "updated_at": row.updated_at,
            "deferred_detail": account.deferred_detail or None, "deferred_until": account.deferred_until,
            "hold_until": account.hold_until, "manual_disconnect": account.manual_disconnect,
            "credit_class": account.credit_class or None,
            "disconnect_point": format_fen(account.disconnect_point_fen),
            "reconnect_at": format_fen(account.reconnect_at_fen),
            "emergency_credit_outstanding": format_fen(account.emergency.outstanding_fen),
            "final_warning_at": account.final_warning_at,
            "final_warning_delivered_at": account.final_warning_delivered_at, **_configuration(spec, account)}

    async def ledger(self, account_id: str, *, limit: int, before_id: int | None) -> dict[str, Any]:
        """A page of the account's ledger, newest first."""
        if account_id not in self.catalog.accounts:
            raise UnknownAccount(f"no account {account_id!r}")
        data = [{"id": r.id, "kind": r.kind, "amount": format_fen(r.amount_fen),
                 "balance_after": format_fen(r.balance_after_fen), "created_at": r.created_at,
                 "reference": r.reference, "payment_source": r.payment_source, "payment_id": r.payment_id,
                 "meter_id": r.meter_id, "energy_wh": r.energy_wh, "period": r.period, "detail": r.detail}
                for r in await self.store.ledger(account_id, limit=limit, before_id=before_id)]
        return {"data": data, "next_before_id": _page(data, limit, "id")}

    async def meter(self, meter_id: str) -> dict[str, Any]:
        """Relay, communication health, the latest reading (stored or only in memory) and quarantine."""
        spec = self.catalog.meters.get(meter_id)
        if spec is None:
            raise UnknownMeter(f"no meter {meter_id!r}")
        rows = await self.store.meter(meter_id, spec.account_id)
        row = rows.meter
        if row is None:
            raise UnknownMeter(f"no meter {meter_id!r}")
        cursor = (rows.account_state or {}).get("meters", {}).get(meter_id) or {}
        pending = cursor.get("pending")
        latest = None if rows.newest is None else _reading_shape(rows.newest, billed=rows.newest.billed)
        last_success_at = row.last_success_at  # written when the health or relay changed; else the newest reading's
        if latest is not None and (last_success_at is None or latest["taken_at"] > last_success_at):
            last_success_at = latest["taken_at"]
        unstored = self.unstored.get(meter_id)  # newer than the stored one when it changed nothing
        if unstored is not None and (latest is None or unstored.taken_at > latest["taken_at"]):
            latest = _reading_shape(unstored, billed=True)  # the same energy as the stored one: nothing to bill
            if last_success_at is None or unstored.taken_at > last_success_at:
                last_success_at = unstored.taken_at
        return {"id": row.id, "account_id": row.account_id, "bus": spec.bus_id, "groups": list(spec.groups),
                "unit_id": spec.unit_id, "address": spec.address, "model": spec.model,
                "poll_interval_s": spec.poll_interval_s,
                "relay": row.relay, "relay_fault": row.relay_fault, "health": row.health,
                "consecutive_failures": row.consecutive_failures, "last_error": row.last_error,
                "last_success_at": last_success_at, "last_reading": latest,
                "quarantine": None if pending is None else {"kind": pending.get("kind"),
                                                            "reason": pending.get("reason"),
                                                            "reading": pending.get("reading")}}

    async def readings(self, meter_id: str, *, limit: int, before_id: int | None) -> dict[str, Any]:
        """A page of the meter's stored readings, newest first."""
        if meter_id not in self.catalog.meters:
            raise UnknownMeter(f"no meter {meter_id!r}")
        rows = await self.store.readings(meter_id, limit=limit, before_id=before_id)
        return {"data": [_reading_shape(r, billed=r.billed) for r in rows],
                "next_before_id": rows[-1].id if len(rows) == limit else None}

    async def command(self, command_id: str) -> dict[str, Any]:
        record = await self.store.command(command_id)
        if record is None:
            raise UnknownCommand(f"no command {command_id!r}")
        return command_shape(record)

    async def notice(self, notice_id: int) -> dict[str, Any]:
        record = await self.store.notice(notice_id)
        if record is None:
            raise UnknownNotice(f"no notice {notice_id}")
        return notice_shape(record)

    async def ready(self) -> None:
        """Raise unless storage answers."""
        await self.store.ping()


def _configuration(spec: Any, account: Any) -> dict[str, Any]:
    """An account's configuration as the API shows it: status, tariff (the one in force), a tariff change to come."""
    config = spec.config
    if config is None:
        return {}
    tariff, change = config.tariff, None
    switch = getattr(account, "tariff_switch", None)
    if switch is not None:
        tariff = switch[1]
    elif config.tariff_next is not None:
        change = {"tariff": config.tariff_next, "effective_at": config.tariff_next_at}
    return {"status": config.status, "tariff": tariff, "tariff_change": change,
            "warning1": format_fen(config.warning1_fen), "warning2": format_fen(config.warning2_fen),
            "contacts": len(config.contacts)}
