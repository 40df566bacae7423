"""Codec errors of DL/T 645. All are ``drivers.errors.FrameError``, so a driver can let them through unchanged.

FrameError (drivers.errors)
└── Dlt645CodecError      anything the DL/T 645 codec rejects while decoding
    ├── ChecksumError     CS byte does not match the sum
    ├── BcdError          a nibble above 9 where BCD was expected
    └── AddressError      an address field that is not 12 BCD digits / AA wildcards
"""

from __future__ import annotations

from drivers.errors import FrameError

__all__ = ["AddressError", "BcdError", "ChecksumError", "Dlt645CodecError"]


class Dlt645CodecError(FrameError):
    """Bytes that are not a valid DL/T 645-2007 frame or field."""


class ChecksumError(Dlt645CodecError):
    """The CS byte is not the sum (mod 256) of the bytes from the first 68H to the last data byte."""


class BcdError(Dlt645CodecError):
    """A field that should hold packed BCD holds a nibble above 9."""


class AddressError(Dlt645CodecError):
    """An address field that is neither 12 BCD digits nor a valid AA-wildcard / 99-broadcast address."""
