"""Library failures map to the driver error tree in one place (drivers/modbus/exceptions.py)."""

from __future__ import annotations

import pytest
import serial
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.register_message import ReadInputRegistersResponse

from drivers.errors import ConnectError, DriverError, ExceptionReply, FrameError, MeterTimeout
from drivers.modbus.exceptions import check_reply, map_modbus_exceptions
from drivers.modbus.mbap import Reply
from drivers.modbus.registers import EXCEPTION_NAMES, exception_reason


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ConnectionException("Not connected"), ConnectError),
        (ModbusIOException("No response received after 0 retries, continue with next request"), MeterTimeout),
        (ModbusIOException("ERROR: request uses device id=2 but received 3."), FrameError),
        (ModbusException("something odd"), FrameError),
        (TimeoutError(), MeterTimeout),
        (ConnectionRefusedError(111, "refused"), ConnectError),
        (serial.SerialException("could not open port /dev/ttyX"), ConnectError),
    ],
)
def test_library_errors_become_driver_errors(raised, expected):
    with pytest.raises(expected) as info, map_modbus_exceptions(meter_id="m7", what="read"):
        raise raised
    assert info.value.meter_id == "m7"
    assert info.value.__cause__ is raised
    assert str(info.value).startswith("[m7] read")


def test_driver_errors_pass_through():
    error = ExceptionReply("x", code=2)
    with pytest.raises(ExceptionReply) as info, map_modbus_exceptions():
        raise error
    assert info.value is error


def test_other_errors_are_not_swallowed():
    with pytest.raises(KeyError), map_modbus_exceptions():
        raise KeyError("bug")


def test_exception_replies_carry_their_code():
    with pytest.raises(ExceptionReply) as info:
        check_reply(ExceptionResponse(4, exception_code=2), meter_id="m1", what="read")
    assert info.value.code == 2
    assert "illegal data address" in str(info.value)
    assert isinstance(info.value, DriverError)


def test_normal_replies_pass():
    reply = ReadInputRegistersResponse(registers=[1, 2])
    assert check_reply(reply) is reply
    with pytest.raises(MeterTimeout):
        check_reply(None)


@pytest.mark.parametrize("code", [*sorted(EXCEPTION_NAMES), 7, 0x63])
@pytest.mark.parametrize("client", ["pymodbus", "mbap"])
def test_every_exception_code_becomes_a_named_reason(code: int, client: str) -> None:
    """Both reply types the driver sees (pymodbus's on RTU, the MBAP client's on TCP) give the same error."""
    reply = ExceptionResponse(5, exception_code=code) if client == "pymodbus" else Reply(0x85, 1, 7, 0, 1, [], [], code)
    with pytest.raises(ExceptionReply) as info:
        check_reply(reply, meter_id="m1", what="unit 1 relay open")
    assert info.value.code == code
    assert info.value.reasons == (exception_reason(code),) and info.value.reason == exception_reason(code)
    assert str(info.value) == f"[m1] unit 1 relay open: Modbus {exception_reason(code)}"
