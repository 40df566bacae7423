"""Meter protocol drivers: one interface (drivers.base.MeterDriver), several protocols."""
