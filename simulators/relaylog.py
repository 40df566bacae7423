"""Every relay write a simulator received, in order, for tests that check what reached the meters.

Both servers (Modbus and DL/T 645) add one ``RelayWrite`` per relay command that arrives on the wire for one of
their meters, whatever happened to it:

* ``executed``: the command was carried out (the relay switched, or started its trip delay; protect was set ...).
* ``reason``: why not, when it was not: ``no-answer`` (the meter did not hear it), ``exception`` (an injected
  error reply), ``stuck`` (acknowledged, the contact did not move), ``protect`` (a trip refused in 保电),
  ``password`` (bad password or level), ``expired`` (validity end time passed on the meter's clock),
  ``bad-value`` / ``bad-address`` / ``bad-function`` / ``bad-frame`` (a malformed command), ``unknown-command``.
* ``reply``: what happened to the answer: ``sent`` (including error answers and late ones), ``lost`` (``mute``,
  or a broadcast, which nobody answers), ``spoiled`` (garbage or a bad checksum), ``none`` (``no-answer``).

Entries are numbered 1, 2, 3 ... for the life of the process; ``since(n)`` returns the entries after number n.
Only the newest ``capacity`` entries are kept (a benchmark may send millions of commands).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RelayLog", "RelayWrite"]


@dataclass(frozen=True, slots=True)
class RelayWrite:
    """One relay write as the simulator saw it.

    Args:
        index: position in the log, 1 for the first write.
        time: wall-clock time of arrival, UTC, ISO 8601 with milliseconds.
        meter: the meter's index in the fleet (as fault plans name it).
        id: the meter's protocol identity (Modbus ``PORT/UNIT``, DL/T 645 12-digit address).
        protocol: ``modbus`` or ``dlt645``.
        asked: ``trip``, ``close``, ``close-allowed``, ``alarm``, ``alarm-release``, ``protect``,
            ``protect-release``, or ``invalid`` (a value or command the meter does not know).
        executed: whether the meter carried it out.
        reason: why it was not executed (``None`` when it was).
        reply: ``sent``, ``lost``, ``spoiled`` or ``none``.
        detail: protocol facts (Modbus function, address and value; DL/T 645 N1, password level, operator).
    """

    index: int
    time: str
    meter: int
    id: str
    protocol: str
    asked: str
    executed: bool
    reason: str | None
    reply: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The entry as a JSON object (what ``GET /relay-log`` answers)."""
        return asdict(self)


class RelayLog:
    """An append-only, bounded log of relay writes.

    Args:
        capacity: how many of the newest entries are kept.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._entries: deque[RelayWrite] = deque(maxlen=capacity)
        self._next = 1

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        *,
        meter: int,
        id: str,
        protocol: str,
        asked: str,
        executed: bool,
        reason: str | None = None,
        reply: str = "sent",
        detail: dict[str, Any] | None = None,
    ) -> RelayWrite:
        """Append one write (see ``RelayWrite`` for the fields) and return it."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        entry = RelayWrite(self._next, now, meter, id, protocol, asked, executed,
                           None if executed else reason, reply, dict(detail or {}))
        self._next += 1
        self._entries.append(entry)
        return entry

    @property
    def last_index(self) -> int:
        """The number of the newest entry (0 when nothing was logged)."""
        return self._next - 1

    def since(self, index: int = 0) -> list[RelayWrite]:
        """The entries numbered after ``index``, oldest first.

        Args:
            index: the last entry number the caller has already seen (0: everything kept).
        """
        return [entry for entry in self._entries if entry.index > index]
