"""What the running status words (protocols.md §1.8) say: status word 3 (04000503) of the relay and the meter,
status word 7 (04000507) of tampering. Pure decoding."""

from __future__ import annotations

from drivers.base import RelayState
from drivers.dlt645.constants import StatusWord3, StatusWord7

__all__ = ["TAMPER_FLAGS", "relay_state", "status_fields", "tamper_flags"]

# The tamper bits of status word 7 and their flag names, in the order of the names (so results come out sorted).
TAMPER_FLAGS: tuple[tuple[str, StatusWord7], ...] = (
    ("cover_open", StatusWord7.COVER_OPEN),  # bit 9, 开表盖
    ("terminal_cover_open", StatusWord7.TERMINAL_COVER_OPEN),  # bit 10, 开端钮盖
)


def relay_state(status_word_3: int) -> RelayState:
    """Bit 4 is the contact (never bit 6, which is only what was commanded); open with bit 6 clear (a close
    commanded) is a close-allowed relay waiting for the customer's button (合闸允许)."""
    if not status_word_3 & StatusWord3.RELAY_OPEN:
        return RelayState.CLOSED
    return RelayState.OPEN if status_word_3 & StatusWord3.RELAY_COMMAND_TRIP else RelayState.ARMED


def status_fields(word: int) -> dict[str, object]:
    """The word and what the gateway shows of it with a reading."""
    return {
        "status_word_3": word,
        "relay_commanded": "open" if word & StatusWord3.RELAY_COMMAND_TRIP else "closed",
        "pre_trip_alarm": bool(word & StatusWord3.PRE_TRIP_ALARM),
        "protected": bool(word & StatusWord3.PROTECTED),
    }


def tamper_flags(status_word_7: int) -> tuple[str, ...]:
    """The tamper flags status word 7 raises, sorted by name (``()``: none); its other bits (phase sequence,
    imbalance, power failure...) are not tamper flags and are ignored."""
    return tuple(name for name, bit in TAMPER_FLAGS if status_word_7 & bit)
