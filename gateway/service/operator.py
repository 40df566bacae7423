"""Operator commands: checks before a manual relay command, bulk commands with a dry run, cancellation."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.service import commands as cmds
from gateway.service.accounts import UnknownMeter
from gateway.service.commands import CommandRecord

__all__ = ["CommandNotCancellable", "ManualCheck", "UnknownCommand", "check_manual_command"]


class UnknownCommand(LookupError):
    """No command with that id."""


class CommandNotCancellable(Exception):
    """Only a queued command can be cancelled; one already on the wire is not."""


@dataclass(frozen=True, slots=True)
class ManualCheck:
    """What a manual command would do: allowed or not, and why; whether it sets an operator hold."""

    meter_id: str
    action: str
    allowed: bool
    reason: str
    sets_hold_until: dt.datetime | None = None
    supersedes: tuple[str, ...] = ()


async def check_manual_command(service: object, meter_id: str, action: str, *, role: str, force: bool,
                               now: dt.datetime) -> ManualCheck:
    """Decide whether a manual disconnect/reconnect may go out, and what it will do (for dry runs too).

    - a protected (保电) account is disconnected only by an admin with ``force``;
    - a reconnect of an account at or below its disconnect point sets an operator hold, so that the engine does
      not cut it off again at once.
    """
    from gateway.service.handlers import Service

    assert isinstance(service, Service)
    spec = service.catalog.meters.get(meter_id)
    if spec is None:
        raise UnknownMeter(meter_id)
    account_spec = service.catalog.accounts[spec.account_id]
    async with service.uow(readonly=True) as uow:
        row = (await uow.execute(sa.select(t.accounts.c.balance_fen, t.accounts.c.state)
                                 .where(t.accounts.c.id == spec.account_id))).one()
        active = tuple((await uow.execute(sa.select(t.commands.c.id).where(
            t.commands.c.meter_id == meter_id, t.commands.c.state.in_(cmds.ACTIVE_STATES)))).scalars())
    account = service.account_from_row(spec.account_id, row)
    if action == "open" and account.is_protected:
        if not (force and role == "admin"):
            return ManualCheck(meter_id, action, False,
                               "the account is protected: a disconnect needs the admin role and force", None, active)
        return ManualCheck(meter_id, action, True, "protected account, forced by an admin", None, active)
    if action == "close" and account.balance_fen <= account.disconnect_point_fen:
        until = now + dt.timedelta(seconds=service.catalog.manual_hold_s)
        return ManualCheck(meter_id, action, True, "balance at or below the disconnect point: an operator hold is set",
                           until, active)
    return ManualCheck(meter_id, action, True, "ok", None, active)


async def cancel_command(service: object, command_id: str, *, actor: str) -> CommandRecord:
    from gateway.service.handlers import Service

    assert isinstance(service, Service)
    now = service.clock()
    async with service.uow() as uow:
        record = await cmds.get_command(uow, command_id)
        if record is None:
            raise UnknownCommand(command_id)
        if record.state != "queued" or not await cmds.transition(uow, command_id, "queued", "cancelled", now,
                                                                error=f"cancelled by {actor}"):
            raise CommandNotCancellable(f"command {command_id} is {record.state}; only a queued command can be "
                                        "cancelled")
        await uow.audit(actor, "command.cancel", command_id, None, now)
        await uow.commit()
        cancelled = await cmds.get_command(uow, command_id)
    assert cancelled is not None
    return cancelled
