"""Manual relay commands: the checks before one goes out, bulk commands with a dry run, cancellation.

- Operator identity and reason are mandatory (the API enforces both).
- A protected (保电) account is disconnected by hand only by an admin with ``force``.
- A manual disconnect is not undone by the engine (a payment does not reconnect it); a manual reconnect of an
  account at or below its disconnect point places an operator hold (``engine.manual_hold_s``).
- The command, the account's new state and the audit record are written in one transaction.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from gateway.domain.account import PrepaidAccount
from gateway.service.account_cache import load_account
from gateway.service.commands import CommandRecord
from gateway.service.errors import CommandNotAllowed, CommandNotCancellable, UnknownCommand, UnknownMeter
from gateway.service.facade import Service
from gateway.service.jobs import AccountJob

__all__ = ["CommandNotAllowed", "CommandNotCancellable", "ManualOutcome", "UnknownCommand", "cancel_command", "manual_command"]


@dataclass(frozen=True, slots=True)
class ManualOutcome:
    """What a manual command did (or, in a dry run, would do) and why."""

    meter_id: str
    action: str
    allowed: bool
    reason: str
    command: CommandRecord | None = None
    hold_until: dt.datetime | None = None
    supersedes: tuple[str, ...] = ()


def _verdict(account: PrepaidAccount, action: str, *, role: str, force: bool, hold_s: float,
             now: dt.datetime) -> tuple[bool, str, dt.datetime | None]:
    if action == "open" and account.is_protected:
        if force and role == "admin":
            return True, "protected account: forced by an admin", None
        return False, "the account is protected (保电): a disconnect needs the admin role and force", None
    if action == "close" and account.balance_fen <= account.disconnect_point_fen:
        until = now + dt.timedelta(seconds=hold_s)
        return True, "balance at or below the disconnect point: an operator hold is placed", until
    if action == "close" and account.manual_disconnect:
        return True, "ends a manual disconnect", None
    return True, "ok", None


async def manual_command(service: Service, meter_id: str, action: str, *, role: str, actor: str,
                         operator: str, reason: str, force: bool = False, dry_run: bool = False) -> ManualOutcome:
    """Check and (unless ``dry_run``) queue an operator's disconnect ("open") or reconnect ("close")."""
    spec = service.catalog.meters.get(meter_id)
    if spec is None:
        raise UnknownMeter(f"no meter {meter_id!r}")
    now = service.clock()
    async with service.uow(readonly=True) as uow:
        account = await load_account(uow, service.catalog, spec.account_id)
        active = tuple(record.id for record in await uow.commands.active(meter_id))
    allowed, why, hold_until = _verdict(account, action, role=role, force=force,
                                        hold_s=service.catalog.manual_hold_s, now=now)
    if dry_run or not allowed:
        return ManualOutcome(meter_id, action, allowed, why, None, hold_until, active)
    hold = dt.timedelta(seconds=service.catalog.manual_hold_s)

    def switch(account: PrepaidAccount, now: dt.datetime) -> dt.datetime | None:
        # checked again inside the transaction: the balance may have moved since the check above
        ok, _, _ = _verdict(account, action, role=role, force=force, hold_s=hold.total_seconds(), now=now)
        if not ok:
            raise CommandNotAllowed("the account became protected: a disconnect needs the admin role and force")
        return account.manual_switch(action, now, hold=hold, by=operator)

    detail: dict[str, Any] = {"meter_id": meter_id, "reason": reason, "operator": operator, "force": force}
    until, record = await service.writer.submit(AccountJob(
        spec.account_id, switch, origin="operator", reason=reason, audit=(actor, f"command.{action}", detail),
        command=dict(meter_id=meter_id, action=action, origin="operator", operator=operator, reason=reason)))
    return ManualOutcome(meter_id, action, True, why, record, until, active)


async def cancel_command(service: Service, command_id: str, *, actor: str) -> CommandRecord:
    """Cancel a queued command (one already sent can't be taken back: send the opposite command instead)."""
    now = service.clock()
    async with service.uow() as uow:
        record = await uow.commands.get(command_id)
        if record is None:
            raise UnknownCommand(f"no command {command_id!r}")
        if record.state != "queued" or not await uow.commands.transition(command_id, "queued", "cancelled", now,
                                                                         error=f"cancelled by {actor}"):
            raise CommandNotCancellable(f"command {command_id} is {record.state}; only a queued command can be "
                                        "cancelled")
        await uow.audit(actor, "command.cancel", command_id, None, now)
        await uow.commit()
        cancelled = await uow.commands.get(command_id)
    assert cancelled is not None
    return cancelled
