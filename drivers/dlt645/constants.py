"""Numbers of DL/T 645-2007 (reference/protocols.md §1.4–§1.9): function codes, ERR bits, DIs, 1CH commands."""

from __future__ import annotations

import enum

from drivers.errors import join_reasons

__all__ = [
    "DI",
    "ERROR_REASONS",
    "NO_REASON_GIVEN",
    "ErrorBits",
    "Function",
    "RemoteCommand",
    "StatusWord3",
    "StatusWord7",
    "describe_error",
    "energy_rate_di",
    "error_reasons",
]


class Function(enum.IntEnum):
    """Function code (C bits D4..D0). The reply sets D7 (| 0x80), an abnormal reply D7 and D6 (| 0xC0)."""

    SECURITY = 0x03  # 安全认证 (ESAM), grid extension
    BROADCAST_TIME = 0x08  # 广播校时
    READ = 0x11  # 读数据
    READ_FOLLOW_UP = 0x12  # 读后续数据
    READ_ADDRESS = 0x13  # 读通信地址
    WRITE = 0x14  # 写数据
    WRITE_ADDRESS = 0x15  # 写通信地址
    FREEZE = 0x16  # 冻结命令
    CHANGE_BAUD = 0x17  # 更改通信速率
    CHANGE_PASSWORD = 0x18  # 修改密码
    CLEAR_DEMAND = 0x19  # 最大需量清零
    CLEAR_METER = 0x1A  # 电表清零
    CLEAR_EVENTS = 0x1B  # 事件清零
    REMOTE_CONTROL = 0x1C  # 跳闸/合闸/报警/保电, grid extension
    MULTI_FUNCTION_OUTPUT = 0x1D  # 多功能端子输出, grid extension


class ErrorBits(enum.IntFlag):
    """The ERR byte of an abnormal reply (§1.6)."""

    OTHER = 0x01  # 其他错误
    NO_DATA = 0x02  # 无请求数据
    PASSWORD = 0x04  # 密码错/未授权
    BAUD = 0x08  # 通信速率不能更改
    YEAR_ZONES = 0x10  # 年时区数超
    DAY_PERIODS = 0x20  # 日时段数超
    TARIFFS = 0x40  # 费率数超
    RESERVED = 0x80  # reserved (one firmware: programming key not pressed)


# One named reason per ERR bit, in bit order (protocols.md §1.6). Bit 7 is reserved in the standard; one
# firmware uses it internally for "programming key not pressed", which is [UNVERIFIED] on the wire.
ERROR_REASONS: tuple[tuple[ErrorBits, str], ...] = (
    (ErrorBits.OTHER, "other error"),  # 其他错误; 1CH state conflicts (e.g. trip while 保电) land here
    (ErrorBits.NO_DATA, "no requested data"),  # 无请求数据: unknown / unsupported DI
    (ErrorBits.PASSWORD, "wrong password / not authorised"),  # 密码错/未授权
    (ErrorBits.BAUD, "baud rate cannot be changed"),  # 通信速率不能更改
    (ErrorBits.YEAR_ZONES, "too many year zones"),  # 年时区数超
    (ErrorBits.DAY_PERIODS, "too many day periods"),  # 日时段数超
    (ErrorBits.TARIFFS, "too many tariffs"),  # 费率数超
    (ErrorBits.RESERVED, "reserved (0x80)"),  # reserved
)
NO_REASON_GIVEN = "no reason given"  # an ERR byte of 00H


def error_reasons(err: int) -> tuple[str, ...]:
    """The named reasons of an ERR byte: one per set bit, in bit order; ``("no reason given",)`` for 00H."""
    reasons = tuple(text for bit, text in ERROR_REASONS if err & bit)
    return reasons or (NO_REASON_GIVEN,)


def describe_error(err: int) -> str:
    """The reasons of an ERR byte on one line, e.g. ``"no requested data; wrong password / not authorised"``."""
    return join_reasons(error_reasons(err))


class DI(enum.IntEnum):
    """Data identifiers this package reads (DI3 DI2 DI1 DI0 written naturally; sent DI0 first)."""

    ENERGY_COMBINED_TOTAL = 0x00000000
    ENERGY_FORWARD_TOTAL = 0x00010000
    ENERGY_FORWARD_RATE_1 = 0x00010100  # 尖; rate n is 0x000100nn
    ENERGY_FORWARD_BLOCK = 0x0001FF00  # total + rates, 4 bytes each
    ENERGY_REVERSE_TOTAL = 0x00020000
    VOLTAGE_A = 0x02010100
    VOLTAGE_B = 0x02010200
    VOLTAGE_C = 0x02010300
    CURRENT_A = 0x02020100
    CURRENT_B = 0x02020200
    CURRENT_C = 0x02020300
    POWER_TOTAL = 0x02030000
    DATE_WEEKDAY = 0x04000101
    TIME = 0x04000102
    COMM_ADDRESS = 0x04000401
    METER_NUMBER = 0x04000402
    STATUS_WORD_1 = 0x04000501
    STATUS_WORD_3 = 0x04000503
    STATUS_WORD_7 = 0x04000507  # 合相故障: tamper bits 9 and 10
    REMAINING_ENERGY = 0x00900100
    OVERDRAFT_ENERGY = 0x00900101
    BALANCE = 0x00900200  # 剩余金额, XXXXXX.XX yuan
    OVERDRAFT = 0x00900201  # 透支金额, XXXXXX.XX yuan


def energy_rate_di(rate: int) -> int:
    """Forward active energy of tariff rate ``rate`` (1..63): 000101..00013F00."""
    if not 1 <= rate <= 63:
        raise ValueError(f"rate {rate} out of range 1..63")
    return 0x00010000 | (rate << 8)


class RemoteCommand(enum.IntEnum):
    """N1 of a 1CH remote-control frame (§1.9)."""

    TRIP = 0x1A  # 跳闸
    CLOSE_ALLOWED = 0x1B  # 合闸允许: the customer closes locally
    DIRECT_CLOSE = 0x1C  # 直接合闸
    ALARM = 0x2A  # 报警
    ALARM_RELEASE = 0x2B  # 报警解除
    PROTECT = 0x3A  # 保电
    PROTECT_RELEASE = 0x3B  # 保电解除


class StatusWord3(enum.IntFlag):
    """Bits of status word 3 (04000503) the gateway uses (§1.8)."""

    PROGRAMMING_ENABLED = 1 << 3
    RELAY_OPEN = 1 << 4  # actual contact: 1 = open (断)
    RELAY_COMMAND_TRIP = 1 << 6  # last command: 1 = trip; set at once, before the contact moves
    PRE_TRIP_ALARM = 1 << 7
    PREPAID_KWH = 1 << 8  # bits 8-9 = 01: kWh-type prepaid
    PREPAID_MONEY = 1 << 9  # bits 8-9 = 10: money-type prepaid
    PROTECTED = 1 << 12  # 保电


class StatusWord7(enum.IntFlag):
    """Bits of status word 7 (04000507, 合相故障) the gateway uses (§1.8; a meter firmware header,
    ``UN_RUNWORD7_FORM``): the tamper flags."""

    COVER_OPEN = 1 << 9  # 开表盖: the meter cover has been opened
    TERMINAL_COVER_OPEN = 1 << 10  # 开端钮盖: the terminal cover has been opened
