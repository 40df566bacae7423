"""Fault injection for simulated meters, independent of the protocol.

A ``FaultPlan`` says which meters of a fleet misbehave and how. Meters are named by their index in the fleet
(0, 1, 2, ... across every port or bus of it), so a plan means the same thing for Modbus and DL/T 645 servers.
A server asks ``plan.reply(index)`` once per request, **before** it executes it, and ``plan.relay_stuck(index)`` /
``plan.counter_reset_due(index)`` where they apply; what a fault looks like on the wire is the server's business:

    no-answer       the meter does not hear the request: nothing is executed (a relay command does not switch
                    the relay) and nothing is answered; the master times out
    mute[:P]        the meter hears and executes the request (a relay command switches the relay) but its reply
                    is lost (with probability P per request, default 1); the master times out
    slow:S          the answer comes S seconds late (the request is executed at once)
    exception:C     the meter answers with protocol error code C (Modbus exception code, DL/T 645 ERR byte) and
                    does not execute the request
    garbage[:P]     random bytes instead of the answer (with probability P per answer, default 1); executed
    bad-crc[:P]     the answer with a wrong checksum / CRC (probability P); executed
    relay-stuck     relay commands are acknowledged but the contact does not move
    counter-reset[:S]  the energy counter drops to 0, once, S seconds after the plan started (default at once)
    cover-open  the meter reports its cover opened (a tamper flag: DL/T 645 status word 7 bit 9, the model's
                tamper register) until the fault is removed
    terminal-cover-open  the same for the terminal cover (status word 7 bit 10)

``no-answer`` versus ``mute``: both look the same to the master (a timeout); only the simulator's side differs.
Until ``mute`` existed, the DL/T 645 server executed a request before deciding to stay silent, so ``no-answer``
switched a relay there (Modbus never did; likewise an injected ``exception`` answered a DL/T 645 command it had
executed). Both servers now apply ``no-answer`` and ``exception`` before executing anything, and a broadcast
(Modbus unit 0, DL/T 645 08H to 99…99) does not reach a ``no-answer`` meter either.

Rules select meters explicitly (``@3,7`` or ``@2-5``) or a seeded fraction of the fleet (``@10%``); the same seed
selects the same meters in every process. The text form (the ``--faults`` option) is ``KIND[:ARG]@WHO``, rules
separated by ``;``, e.g. ``no-answer@10%; slow:0.8@5%; exception:4@3,7; mute@2``. A fraction is drawn per rule,
so two rules with the same fraction pick different meters. A running plan can be changed: ``add``, ``remove``
(one kind, or every kind, for some meters, whichever rule selected them) and ``clear``.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from simulators.loadprofile import unit_random

# plain sorted(), as tests/unit/test_modbus_exports.py checks (not ruff's isort-style order)
__all__ = ["Fault", "FaultKind", "FaultPlan", "NO_FAULT", "ReplyFault", "TAMPER_FLAGS", "parse_faults",  # noqa: RUF022
           "parse_indices"]


class FaultKind(str, enum.Enum):
    """What a misbehaving meter does."""

    NO_ANSWER = "no-answer"
    MUTE = "mute"
    SLOW = "slow"
    EXCEPTION = "exception"
    GARBAGE = "garbage"
    BAD_CRC = "bad-crc"
    RELAY_STUCK = "relay-stuck"
    COUNTER_RESET = "counter-reset"
    COVER_OPEN = "cover-open"
    TERMINAL_COVER_OPEN = "terminal-cover-open"


# Tamper faults and the flag each raises (the flag names of ``Reading.extra["tamper"]``), in the flags' order.
TAMPER_FLAGS: dict[FaultKind, str] = {
    FaultKind.COVER_OPEN: "cover_open",
    FaultKind.TERMINAL_COVER_OPEN: "terminal_cover_open",
}


# Faults that change one answer (as opposed to the meter's behaviour).
_REPLY_KINDS = frozenset({FaultKind.NO_ANSWER, FaultKind.MUTE, FaultKind.SLOW, FaultKind.EXCEPTION,
                          FaultKind.GARBAGE, FaultKind.BAD_CRC})
# Kinds whose optional argument is a probability per answer.
_PROBABILITY_KINDS = frozenset({FaultKind.MUTE, FaultKind.GARBAGE, FaultKind.BAD_CRC})


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault.

    Args:
        kind: what happens.
        delay_s: SLOW: how late the answer is.
        code: EXCEPTION: the protocol's error code.
        probability: MUTE, GARBAGE, BAD_CRC (and any reply fault): chance per answer.
        after_s: COUNTER_RESET: seconds after the plan's start.
    """

    kind: FaultKind
    delay_s: float = 0.0
    code: int = 4
    probability: float = 1.0
    after_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"{self.kind.value}: probability must be within 0..1")
        if self.delay_s < 0 or self.after_s < 0:
            raise ValueError(f"{self.kind.value}: times must not be negative")
        if self.kind is FaultKind.SLOW and self.delay_s <= 0:
            raise ValueError("slow: give the delay in seconds, e.g. slow:0.8")
        if not 0 < self.code < 256:
            raise ValueError(f"{self.kind.value}: code must be within 1..255")

    @property
    def text(self) -> str:
        """The rule's text form without the meters, e.g. ``slow:0.8`` or ``mute``."""
        match self.kind:
            case FaultKind.SLOW:
                return f"slow:{self.delay_s:g}"
            case FaultKind.EXCEPTION:
                return f"exception:{self.code}"
            case FaultKind.COUNTER_RESET:
                return f"counter-reset:{self.after_s:g}" if self.after_s else "counter-reset"
            case _:
                return self.kind.value + (f":{self.probability:g}" if self.probability < 1.0 else "")


@dataclass(frozen=True, slots=True)
class ReplyFault:
    """What to do with one request and its answer: nothing (all defaults), not hear it (``silent``), execute it
    but lose the answer (``mute``), delay the answer, refuse it with an error code, or spoil the answer."""

    silent: bool = False
    delay_s: float = 0.0
    exception: int | None = None
    garbage: bool = False
    bad_crc: bool = False
    mute: bool = False

    @property
    def reply_state(self) -> str:
        """What happens to the answer, in the words of the relay log: none, lost, spoiled or sent."""
        if self.silent:
            return "none"
        if self.mute:
            return "lost"
        return "spoiled" if self.garbage or self.bad_crc else "sent"


NO_FAULT = ReplyFault()


@dataclass(slots=True)
class _Rule:
    fault: Fault
    indices: frozenset[int] | None  # explicit meters, or None for a fraction
    fraction: float = 0.0
    salt: int = 0
    excluded: frozenset[int] = frozenset()  # meters a fraction selected but that were healed since

    def selects(self, index: int, seed: int) -> bool:
        if self.indices is not None:
            return index in self.indices
        return index not in self.excluded and unit_random(seed, index, 0xFA17, self.salt) < self.fraction


@dataclass
class FaultPlan:
    """Which meters misbehave and how; changeable while a server runs (tests switch faults on and off).

    Args:
        seed: selects the meters of fractional rules.
        rng: the source of per-answer chances and garbage bytes (seeded for reproducible runs).
        clock: real seconds, for ``counter-reset`` times.
    """

    seed: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    clock: Callable[[], float] = time.monotonic
    _rules: list[_Rule] = field(default_factory=list)
    _cache: dict[int, tuple[Fault, ...]] = field(default_factory=dict)
    _reset_done: set[int] = field(default_factory=set)
    _started: float = 0.0

    def __post_init__(self) -> None:
        self._started = self.clock()

    # --- building ------------------------------------------------------------------------------------------
    def add(self, fault: Fault, *, meters: Iterable[int] | None = None, fraction: float | None = None) -> FaultPlan:
        """Apply ``fault`` to the meters with these fleet indices, or to a seeded ``fraction`` of the fleet."""
        if (meters is None) == (fraction is None):
            raise ValueError("give either meters or fraction")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be within 0..1")
        indices = None if meters is None else frozenset(meters)
        self._rules.append(_Rule(fault, indices, fraction or 0.0, salt=len(self._rules)))
        if fault.kind is FaultKind.COUNTER_RESET and indices is not None:
            self._reset_done -= indices  # a new explicit reset happens again
        self._cache.clear()
        return self

    def remove(self, meters: Iterable[int], kind: FaultKind | None = None) -> None:
        """Heal the given meters of one kind of fault (``None``: of every kind), whichever rule selected them
        (an explicit rule drops them; a fraction excludes them from now on)."""
        healed = frozenset(meters)
        kept: list[_Rule] = []
        for rule in self._rules:
            if kind is not None and rule.fault.kind is not kind:
                kept.append(rule)
            elif rule.indices is None:
                kept.append(replace(rule, excluded=rule.excluded | healed))
            elif rest := rule.indices - healed:
                kept.append(replace(rule, indices=rest))
        self._rules = kept
        self._cache.clear()

    def clear(self, meters: Iterable[int] | None = None) -> None:
        """Heal the given meters (their explicit rules are dropped), or every meter."""
        if meters is None:
            self._rules.clear()
        else:
            healed = frozenset(meters)
            kept: list[_Rule] = []
            for rule in self._rules:
                if rule.indices is None:
                    kept.append(rule)
                elif rest := rule.indices - healed:
                    kept.append(_Rule(rule.fault, rest, salt=rule.salt))
            self._rules = kept
        self._cache.clear()

    def __bool__(self) -> bool:
        return bool(self._rules)

    # --- asking ---------------------------------------------------------------------------------------------
    def faults(self, index: int) -> tuple[Fault, ...]:
        """Every fault of one meter."""
        found = self._cache.get(index)
        if found is None:
            found = tuple(rule.fault for rule in self._rules if rule.selects(index, self.seed))
            self._cache[index] = found
        return found

    def selected(self, kind: FaultKind, meters: int) -> list[int]:
        """Indices among the first ``meters`` that have a fault of this kind."""
        return [i for i in range(meters) if any(f.kind is kind for f in self.faults(i))]

    def reply(self, index: int) -> ReplyFault:
        """What to do with the answer the meter is about to give."""
        faults = self.faults(index) if self._rules else ()
        if not faults:
            return NO_FAULT
        silent, delay, code, garbage, bad_crc, mute = False, 0.0, None, False, False, False
        for fault in faults:
            if fault.kind not in _REPLY_KINDS:
                continue
            if fault.probability < 1.0 and self.rng.random() >= fault.probability:
                continue
            match fault.kind:
                case FaultKind.NO_ANSWER:
                    silent = True
                case FaultKind.MUTE:
                    mute = True
                case FaultKind.SLOW:
                    delay = max(delay, fault.delay_s)
                case FaultKind.EXCEPTION:
                    code = fault.code
                case FaultKind.GARBAGE:
                    garbage = True
                case FaultKind.BAD_CRC:
                    bad_crc = True
        return ReplyFault(silent, delay, code, garbage, bad_crc, mute)

    def relay_stuck(self, index: int) -> bool:
        """Whether the meter ignores relay commands."""
        return bool(self._rules) and any(f.kind is FaultKind.RELAY_STUCK for f in self.faults(index))

    def tamper(self, index: int) -> frozenset[str]:
        """The tamper flags the plan raises on one meter (``cover-open``, ``terminal-cover-open``)."""
        if not self._rules:
            return frozenset()
        return frozenset(TAMPER_FLAGS[f.kind] for f in self.faults(index) if f.kind in TAMPER_FLAGS)

    def counter_reset_due(self, index: int) -> bool:
        """True once, when the meter's counter-reset time has come."""
        if not self._rules or index in self._reset_done:
            return False
        for fault in self.faults(index):
            if fault.kind is FaultKind.COUNTER_RESET and self.clock() - self._started >= fault.after_s:
                self._reset_done.add(index)
                return True
        return False

    def garbage(self, length: int) -> bytes:
        """``length`` random bytes."""
        return bytes(self.rng.getrandbits(8) for _ in range(max(1, length)))

    # --- text form ------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, *, seed: int = 0) -> FaultPlan:
        """A plan from its text form (see the module docstring); ValueError names the bad rule."""
        plan = cls(seed=seed, rng=random.Random(seed))
        for rule in (r.strip() for r in text.replace("\n", ";").split(";")):
            if not rule:
                continue
            try:
                fault, who = rule.split("@", 1) if "@" in rule else (rule, "")
                kind_text, _, arg = fault.strip().partition(":")
                fault_obj = _fault(FaultKind(kind_text.strip()), arg.strip())
                who = who.strip()
                if not who:
                    raise ValueError("say which meters: @10% or @3,7")
                if who.endswith("%"):
                    plan.add(fault_obj, fraction=float(who[:-1]) / 100)
                else:
                    plan.add(fault_obj, meters=parse_indices(who))
            except ValueError as exc:
                known = ", ".join(k.value for k in FaultKind)
                raise ValueError(f"fault rule {rule!r}: {exc} (kinds: {known})") from None
        return plan


def _fault(kind: FaultKind, arg: str) -> Fault:
    number = float(arg) if arg and kind is not FaultKind.EXCEPTION else None
    match kind:
        case FaultKind.SLOW:
            return Fault(kind, delay_s=number or 0.0)
        case FaultKind.EXCEPTION:
            return Fault(kind, code=int(arg, 0) if arg else 4)
        case _ if kind in _PROBABILITY_KINDS:
            return Fault(kind, probability=1.0 if number is None else number)
        case FaultKind.COUNTER_RESET:
            return Fault(kind, after_s=number or 0.0)
        case _:
            if arg:
                raise ValueError(f"{kind.value} takes no argument")
            return Fault(kind)


def parse_indices(text: str) -> list[int]:
    """Meter indices from ``3,7`` or ``2-5`` (or both: ``0,2-4``); ValueError when one is not a number >= 0.

    Args:
        text: comma-separated indices and inclusive ranges.
    """
    indices: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if last:
            indices.extend(range(int(first), int(last) + 1))
        else:
            indices.append(int(first))
    if any(i < 0 for i in indices):
        raise ValueError("meter indices start at 0")
    return indices


def parse_faults(text: str | None, *, seed: int = 0) -> FaultPlan:
    """``FaultPlan.parse``, with None or "" meaning no faults."""
    return FaultPlan.parse(text or "", seed=seed)
