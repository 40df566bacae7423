"""Simulated meters served over Modbus and DL/T 645, single meters and fleets, with fault injection."""
