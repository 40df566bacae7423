"""What status word 3 (04000503, protocols.md §1.8) says of the relay and the meter: pure decoding."""

from __future__ import annotations

from drivers.base import RelayState
from drivers.dlt645.constants import StatusWord3

__all__ = ["relay_state", "status_fields"]


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
