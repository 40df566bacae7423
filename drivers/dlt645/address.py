"""Meter addresses: 12 BCD digits printed on the nameplate, sent low byte first.

Nameplate ``123456789012`` travels as ``12 90 78 56 34 12``. Two special forms exist:

* wildcard (缩位寻址): the high bytes replaced by AAH, e.g. ``AAAAAAAA9012`` → ``12 90 AA AA AA AA``; reads only,
  the meter answers with its real address. All-AA is the read-address (13H) form.
* broadcast ``999999999999``: 08H time sync and 16H freeze only; nobody answers.

Strings here use the nameplate order, with ``AA`` for a wildcard byte.
"""

from __future__ import annotations

from drivers.dlt645.errors import AddressError

__all__ = [
    "ALL_WILDCARD",
    "BROADCAST",
    "address_from_wire",
    "address_matches",
    "address_to_wire",
    "is_broadcast",
    "is_wildcard",
    "normalize_address",
    "wildcard_address",
]

BROADCAST = bytes([0x99] * 6)
ALL_WILDCARD = bytes([0xAA] * 6)


def _is_bcd(byte: int) -> bool:
    return (byte >> 4) <= 9 and (byte & 0x0F) <= 9


def _check_wire(wire: bytes) -> None:
    if len(wire) != 6:
        raise AddressError(f"an address is 6 bytes, got {len(wire)}")
    wild = [b == 0xAA for b in wire]
    # AA bytes may only fill the high end: once one appears, every higher byte is AA too.
    if any(wild) and wild[wild.index(True) :] != [True] * (6 - wild.index(True)):
        raise AddressError(f"AA wildcards must fill the high bytes: {address_from_wire(wire)}")
    if not all(w or _is_bcd(b) for w, b in zip(wild, wire, strict=True)):
        raise AddressError(f"address is not BCD: {wire.hex(' ')}")


def address_to_wire(address: str) -> bytes:
    """Nameplate string (12 digits, or with leading AA wildcard pairs) → the 6 wire bytes.

    Shorter digit strings are padded with leading zeros, as the standard pads unused high digits.
    Raises ``AddressError`` (a ``FrameError``), so config and wire problems are caught as one family.
    """
    text = address.strip().upper()
    if not text or len(text) > 12:
        raise AddressError(f"address must be 1 to 12 characters: {address!r}")
    text = text.rjust(12, "0")
    try:
        wire = bytes.fromhex(text)[::-1]
    except ValueError:
        raise AddressError(f"address must be digits or AA wildcards: {address!r}") from None
    _check_wire(wire)
    return wire


def address_from_wire(wire: bytes) -> str:
    """6 wire bytes → nameplate string (wildcard bytes show as ``AA``). Does not validate."""
    return wire[::-1].hex().upper()


def normalize_address(address: str) -> str:
    """Validate and return the 12-character nameplate form."""
    return address_from_wire(address_to_wire(address))


def wildcard_address(low_digits: str) -> str:
    """Keep the given low digits (an even number) and fill the rest with AA: ``"9012"`` → ``"AAAAAAAA9012"``."""
    if len(low_digits) % 2 or len(low_digits) > 12 or not low_digits.isdigit():
        raise AddressError(f"wildcard keeps an even number of digits: {low_digits!r}")
    return "A" * (12 - len(low_digits)) + low_digits


def is_broadcast(wire: bytes) -> bool:
    return wire == BROADCAST


def is_wildcard(wire: bytes) -> bool:
    return 0xAA in wire


def address_matches(own: bytes, target: bytes, *, allow_wildcard: bool = True) -> bool:
    """Does a frame sent to ``target`` address the meter whose address is ``own`` (both wire order)?

    Broadcast is not a match here: the caller decides which functions accept it.
    """
    if target == own:
        return True
    if not allow_wildcard or len(target) != 6 or not is_wildcard(target):
        return False
    first = target.index(0xAA)
    return target[first:] == ALL_WILDCARD[first:] and target[:first] == own[:first]
