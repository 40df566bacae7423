"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import socat_pty_pair

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A socat pty pair (gateway end, simulator end)."""
    with socat_pty_pair(tmp_path) as pair:
        yield pair
