"""The Modbus packages export a sorted ``__all__`` of names that exist, and never import the gateway."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "drivers.modbus",
    "drivers.priority_lock",
    "drivers.modbus.driver",
    "drivers.modbus.exceptions",
    "drivers.modbus.models",
    "drivers.modbus.quantities",
    "drivers.modbus.registers",
    "drivers.modbus.values",
    "simulators.faults",
    "simulators.loadprofile",
    "simulators.meter",
    "simulators.modbus",
    "simulators.modbus.device",
    "simulators.modbus.fleet",
    "simulators.modbus.server",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_complete(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported)
    assert all(hasattr(module, attr) for attr in exported)


def test_no_gateway_import():
    """In a fresh interpreter: other tests may have imported the gateway into this one."""
    code = (
        f"import sys, {', '.join(MODULES)}\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'gateway'], 'gateway was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
