"""The scenario suite's marker: ``postgresql`` on the second run of a scenario file with ``postgres: true``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: a scenario run on PostgreSQL (a file with `postgres: true`)")
