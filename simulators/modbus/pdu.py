"""Modbus PDU helpers of the simulator's server: CRC-16, packing read answers, exception answers, parsing writes."""

from __future__ import annotations

import struct

from simulators.modbus.device import ILLEGAL_VALUE

__all__ = ["ADDR_COUNT", "crc16", "exception_pdu", "pack_bits", "pack_registers", "parse_write"]

ADDR_COUNT = struct.Struct(">HH")
_REGISTERS: dict[int, struct.Struct] = {}


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> bytes:
    """CRC-16/MODBUS of ``data``, low byte first (as it goes on the wire).

    Args:
        data: the bytes of the frame before the CRC.
    """
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return bytes((crc & 0xFF, crc >> 8))


def pack_registers(fc: int, values: list[int]) -> bytes:
    """The answer PDU of a register read (FC03/04).

    Args:
        fc: the function code.
        values: the 16-bit register values.
    """
    n = len(values)
    packer = _REGISTERS.get(n)
    if packer is None:
        packer = _REGISTERS[n] = struct.Struct(f">BB{n}H")
    return packer.pack(fc, 2 * n, *values)


def pack_bits(fc: int, bits: list[int]) -> bytes:
    """The answer PDU of a bit read (FC01/02), eight bits a byte, LSB first.

    Args:
        fc: the function code.
        bits: 0/1 values.
    """
    out = bytearray((fc, (len(bits) + 7) // 8))
    for start in range(0, len(bits), 8):
        byte = 0
        for i, bit in enumerate(bits[start : start + 8]):
            if bit:
                byte |= 1 << i
        out.append(byte)
    return bytes(out)


def exception_pdu(fc: int, code: int) -> bytes:
    """The exception answer PDU of function ``fc`` with exception ``code``.

    Args:
        fc: the request's function code.
        code: the Modbus exception code.
    """
    return bytes((fc | 0x80, code))


def parse_write(pdu: bytes) -> tuple[int, int, list[int]] | int:
    """``(function code, address, values)`` of a write request (FC05/06/15/16; coils as 0/1), or the exception
    code of a malformed one.

    Args:
        pdu: the request PDU, function code first.
    """
    fc = pdu[0]
    if fc in (5, 6):
        if len(pdu) != 5:
            return ILLEGAL_VALUE
        address, raw = ADDR_COUNT.unpack_from(pdu, 1)
        if fc == 5:
            if raw not in (0x0000, 0xFF00):
                return ILLEGAL_VALUE
            raw = int(raw == 0xFF00)
        return fc, address, [raw]
    if len(pdu) < 6:
        return ILLEGAL_VALUE
    address, count = ADDR_COUNT.unpack_from(pdu, 1)
    byte_count = pdu[5]
    data = pdu[6:]
    if len(data) != byte_count or count < 1:
        return ILLEGAL_VALUE
    if fc == 15:
        if byte_count != (count + 7) // 8:
            return ILLEGAL_VALUE
        return fc, address, [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
    if byte_count != 2 * count:
        return ILLEGAL_VALUE
    return fc, address, list(struct.unpack(f">{count}H", data))
