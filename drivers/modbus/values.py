"""Pure: replies to a model's read plan -> canonical quantity values -> ``drivers.base.Reading``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from drivers.base import Reading, RelayState
from drivers.modbus.models import RELAY_STATE, MeterModel, RelayStateSpec
from drivers.modbus.quantities import RATE_QUANTITIES, to_canonical
from drivers.modbus.registers import decode

__all__ = ["decode_values", "reading_from_values", "relay_state", "relay_state_from_replies"]

# Quantities with their own Reading field; the rest go to Reading.extra under their own name.
_FIELDS = frozenset({"energy_import_total", *RATE_QUANTITIES, "power", "voltage", "current", "balance"})


def decode_values(model: MeterModel, replies: Sequence[Sequence[int]]) -> dict[str, int | float]:
    """Canonical value of every quantity of ``model`` from the replies to ``model.read_plan.requests``."""
    plan = model.read_plan
    values: dict[str, int | float] = {}
    for name, spec in model.registers.items():
        raw = decode(plan.take(name, replies, spec.length), spec.encoding, spec.word_order)
        values[name] = to_canonical(name, raw, scale=spec.scale, unit=spec.unit)
    return values


def relay_state(spec: RelayStateSpec, raw: int) -> RelayState:
    """The contact state a state register's raw value means (UNKNOWN for any other value)."""
    if raw == spec.closed:
        return RelayState.CLOSED
    if raw == spec.open:
        return RelayState.OPEN
    return RelayState.UNKNOWN


def relay_state_from_replies(model: MeterModel, replies: Sequence[Sequence[int]]) -> RelayState | None:
    """The relay state out of the replies to ``model.read_plan.requests``, if the model has a relay."""
    if model.relay is None:
        return None
    (raw,) = model.read_plan.take(RELAY_STATE, replies, 1)
    return relay_state(model.relay.state, int(raw))


def reading_from_values(
    meter_id: str,
    values: Mapping[str, int | float],
    *,
    taken_at: dt.datetime,
    relay: RelayState | None = None,
) -> Reading:
    """Build the Reading; ``voltage``/``current`` fall back to phase 1 on three-phase models."""
    rates = tuple(int(values[name]) for name in RATE_QUANTITIES if name in values)
    voltage = values.get("voltage", values.get("voltage_l1"))
    current = values.get("current", values.get("current_l1"))
    power = values.get("power")
    balance = values.get("balance")
    return Reading(
        meter_id=meter_id,
        taken_at=taken_at,
        energy_wh=int(values["energy_import_total"]),
        energy_wh_by_rate=rates or None,
        power_w=None if power is None else int(power),
        voltage_v=None if voltage is None else float(voltage),
        current_a=None if current is None else float(current),
        relay=relay,
        meter_balance_fen=None if balance is None else int(balance),
        extra={name: value for name, value in values.items() if name not in _FIELDS},
    )
