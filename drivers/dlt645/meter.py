"""The description of one DL/T 645 meter on a bus, as the driver needs it."""

from __future__ import annotations

from dataclasses import dataclass

from drivers.dlt645.address import address_to_wire, is_broadcast, is_wildcard, normalize_address
from drivers.dlt645.constants import RemoteCommand
from drivers.dlt645.errors import AddressError
from drivers.dlt645.messages import encode_secret

__all__ = ["Dlt645Meter"]


@dataclass(frozen=True, slots=True)
class Dlt645Meter:
    """One meter: its id in the gateway and its 12-digit nameplate address.

    Args:
        id: the gateway's meter id (only used in errors and readings).
        address: nameplate address, 12 digits (shorter strings are zero-padded on the left).
        password: 1CH password (6 digits) overriding the driver's; never shown by ``repr``.
        password_level: 1CH password level (PA) overriding the driver's, e.g. ``0x02`` or ``0x04``.
        operator_code: 8-digit operator code overriding the driver's.
        close_command: how ``set_relay(CLOSE)`` closes this meter: ``DIRECT_CLOSE`` (1CH) or ``CLOSE_ALLOWED``
            (1BH); ``None`` uses the driver's setting.
    """

    id: str
    address: str
    password: str | None = None
    password_level: int | None = None
    operator_code: str | None = None
    close_command: RemoteCommand | None = None

    def __post_init__(self) -> None:
        try:
            address = normalize_address(self.address)
        except AddressError as exc:
            raise ValueError(f"meter {self.id}: {exc}") from None
        wire = address_to_wire(address)
        if is_wildcard(wire) or is_broadcast(wire):
            raise ValueError(f"meter {self.id}: a meter needs its own address, not {address}")
        object.__setattr__(self, "address", address)
        if self.password is not None:
            encode_secret(self.password, 3, "password")
        if self.operator_code is not None:
            encode_secret(self.operator_code, 4, "operator code")
        if self.password_level is not None and not 0 <= self.password_level <= 0xFF:
            raise ValueError("password level is one byte")
        if self.close_command not in (None, RemoteCommand.DIRECT_CLOSE, RemoteCommand.CLOSE_ALLOWED):
            raise ValueError("close_command must be DIRECT_CLOSE or CLOSE_ALLOWED")

    @property
    def wire_address(self) -> bytes:
        return address_to_wire(self.address)

    def __repr__(self) -> str:
        password = "None" if self.password is None else "<hidden>"
        return (
            f"Dlt645Meter(id={self.id!r}, address={self.address!r}, password={password}, "
            f"password_level={self.password_level!r}, operator_code={self.operator_code!r}, "
            f"close_command={self.close_command!r})"
        )
