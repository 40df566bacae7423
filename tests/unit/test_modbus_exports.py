"""The Modbus packages export a sorted ``__all__`` of names that exist, and never import the gateway."""

from __future__ import annotations

import importlib
import sys

import pytest

MODULES = [
    "drivers.modbus",
    "drivers.modbus.driver",
    "drivers.modbus.exceptions",
    "drivers.modbus.models",
    "drivers.modbus.quantities",
    "drivers.modbus.registers",
    "drivers.modbus.values",
    "simulators.loadprofile",
    "simulators.meter",
    "simulators.modbus",
    "simulators.modbus.device",
    "simulators.modbus.fleet",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_complete(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported)
    assert all(hasattr(module, attr) for attr in exported)


def test_no_gateway_import():
    for name in MODULES:
        importlib.import_module(name)
    assert not [m for m in sys.modules if m == "gateway" or m.startswith("gateway.")]
