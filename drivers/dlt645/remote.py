"""Remote control of DL/T 645-2007 meters (1CH): relay, alarm and 保电 commands, and how a refusal is named.

A mixin of ``Dlt645Driver`` (kept apart to keep modules small); it relies on the driver's attributes and its
``transact`` and ``read_status_word_3``. A command is sent once (no retry: it may have been carried out).

A refused 1CH command raises ``CommandRefused`` with the ERR bits as named reasons. When the ERR byte has only
"other error" to say about a command that status word 3 can explain (a trip refused in 保电), the driver reads
that word once, with no retry, and names the refusal (``drivers.dlt645.refusals``). If the read fails, the
refusal keeps the ERR bits.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from drivers.base import RelayAction
from drivers.dlt645.codec import Frame
from drivers.dlt645.constants import RemoteCommand, describe_error
from drivers.dlt645.messages import RemoteControlRequest, remote_control_request
from drivers.dlt645.meter import Dlt645Meter
from drivers.dlt645.refusals import explain_refusal, status_word_may_explain
from drivers.errors import CommandRefused, DriverError, join_reasons

__all__ = ["RemoteControlMixin"]

log = logging.getLogger(__name__)


class RemoteControlMixin:
    if TYPE_CHECKING:  # provided by Dlt645Driver
        close_command: RemoteCommand
        meter_timezone: dt.tzinfo
        command_validity: dt.timedelta
        clock: Callable[[], dt.datetime]
        _password_level: int
        _password: str
        _operator_code: str

        async def transact(
            self, request: Frame, *, meter_id: str | None = None, retries: int | None = None
        ) -> Frame: ...
        async def read_status_word_3(self, meter: Dlt645Meter, *, retries: int | None = None) -> int: ...

    async def set_relay(
        self, meter: Dlt645Meter, action: RelayAction, *, valid_until: dt.datetime | None = None
    ) -> None:
        if action is RelayAction.OPEN:
            command = RemoteCommand.TRIP
        else:
            command = meter.close_command or self.close_command
        await self.remote_control(meter, command, valid_until=valid_until)

    async def remote_control(
        self, meter: Dlt645Meter, command: RemoteCommand, *, valid_until: dt.datetime | None = None
    ) -> None:
        """Send a plaintext 1CH command. ``valid_until`` (UTC; naive means UTC) defaults to now + validity.

        Raises ``CommandRefused`` when the meter answers abnormally (``code`` = ERR byte, ``reasons`` = its bits,
        explained by status word 3 where it can, see the module docstring), or when the command has already
        expired (it is then not sent: a meter with a slow clock would still act on it).
        """
        now = self.clock()
        until = (now + self.command_validity) if valid_until is None else valid_until
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.UTC)
        if until <= now:
            raise CommandRefused(
                f"{command.name} expired at {until.isoformat()} before it was sent",
                reason="expired before sending",
                meter_id=meter.id,
            )
        local_until = until.astimezone(self.meter_timezone).replace(tzinfo=None, microsecond=0)
        request = RemoteControlRequest(
            password_level=self._password_level if meter.password_level is None else meter.password_level,
            password=meter.password or self._password,
            operator_code=meter.operator_code or self._operator_code,
            command=command,
            valid_until=local_until,
        )
        # One attempt: after a timeout or a garbled reply the command may have been carried out, and whoever sends
        # it reads the relay back before sending it again (a second frame would be a second trip on the wire).
        reply = await self.transact(remote_control_request(meter.wire_address, request), meter_id=meter.id,
                                    retries=0)
        if reply.is_abnormal:
            raise await self._refusal(meter, command, reply.error_code or 0)

    async def _refusal(self, meter: Dlt645Meter, command: RemoteCommand, code: int) -> CommandRefused:
        """The ``CommandRefused`` for an abnormal 1CH reply; reads status word 3 once if it may explain it."""
        detail = f"ERR {code:02X}H: {describe_error(code)}"
        word: int | None = None
        if status_word_may_explain(command, code):
            try:
                word = await self.read_status_word_3(meter, retries=0)
            except Exception as exc:  # whatever went wrong, the meter's refusal is what gets raised
                log.info(
                    "dlt645 %s: %s refused (%s); status word 3 unreadable: %s",
                    meter.id, command.name, detail, exc, exc_info=not isinstance(exc, DriverError),
                )
                detail += f"; status word 3 unreadable: {_bare(exc)}"
            else:
                detail += f"; status word 3 = {word:04X}H"
        reasons = explain_refusal(command, code, word)
        return CommandRefused(
            f"meter refused {command.name}: {join_reasons(reasons)} ({detail})",
            reasons=reasons,
            code=code,
            meter_id=meter.id,
        )

    async def trip(self, meter: Dlt645Meter, *, valid_until: dt.datetime | None = None) -> None:
        await self.remote_control(meter, RemoteCommand.TRIP, valid_until=valid_until)

    async def close_allowed(self, meter: Dlt645Meter, *, valid_until: dt.datetime | None = None) -> None:
        await self.remote_control(meter, RemoteCommand.CLOSE_ALLOWED, valid_until=valid_until)

    async def direct_close(self, meter: Dlt645Meter, *, valid_until: dt.datetime | None = None) -> None:
        await self.remote_control(meter, RemoteCommand.DIRECT_CLOSE, valid_until=valid_until)

    async def alarm(self, meter: Dlt645Meter, *, valid_until: dt.datetime | None = None) -> None:
        await self.remote_control(meter, RemoteCommand.ALARM, valid_until=valid_until)

    async def alarm_release(self, meter: Dlt645Meter, *, valid_until: dt.datetime | None = None) -> None:
        await self.remote_control(meter, RemoteCommand.ALARM_RELEASE, valid_until=valid_until)

    async def protect(self, meter: Dlt645Meter, *, valid_until: dt.datetime | None = None) -> None:
        await self.remote_control(meter, RemoteCommand.PROTECT, valid_until=valid_until)

    async def protect_release(self, meter: Dlt645Meter, *, valid_until: dt.datetime | None = None) -> None:
        await self.remote_control(meter, RemoteCommand.PROTECT_RELEASE, valid_until=valid_until)


def _bare(exc: Exception) -> str:
    """An error's message without the "[meter]" prefix ``DriverError`` adds (the refusal has its own)."""
    if isinstance(exc, DriverError) and exc.args:
        return str(exc.args[0])
    return f"{type(exc).__name__}: {exc}"
