"""DL/T 645-2007: a pure codec (framing, +33H, checksum, BCD, addresses) and a driver over a byte transport."""

from drivers.dlt645.address import address_from_wire, address_to_wire, normalize_address, wildcard_address
from drivers.dlt645.bcd import DataFormat, bcd_decode, bcd_encode
from drivers.dlt645.codec import Frame, FrameReader, decode_frame, encode_frame, extract_frames
from drivers.dlt645.constants import (
    DI,
    ErrorBits,
    Function,
    RemoteCommand,
    StatusWord3,
    StatusWord7,
    describe_error,
    error_reasons,
)
from drivers.dlt645.driver import QUANTITIES, Dlt645Driver
from drivers.dlt645.errors import AddressError, BcdError, ChecksumError, Dlt645CodecError
from drivers.dlt645.meter import Dlt645Meter
from drivers.dlt645.refusals import PROTECT_STATE, explain_refusal
from drivers.dlt645.timesync import run_time_sync

__all__ = [
    "DI",
    "PROTECT_STATE",
    "QUANTITIES",
    "AddressError",
    "BcdError",
    "ChecksumError",
    "DataFormat",
    "Dlt645CodecError",
    "Dlt645Driver",
    "Dlt645Meter",
    "ErrorBits",
    "Frame",
    "FrameReader",
    "Function",
    "RemoteCommand",
    "StatusWord3",
    "StatusWord7",
    "address_from_wire",
    "address_to_wire",
    "bcd_decode",
    "bcd_encode",
    "decode_frame",
    "describe_error",
    "encode_frame",
    "error_reasons",
    "explain_refusal",
    "extract_frames",
    "normalize_address",
    "run_time_sync",
    "wildcard_address",
]
