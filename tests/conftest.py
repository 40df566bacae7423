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


@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster for the whole run (skipped outside CI when PostgreSQL is missing)."""
    from tests.postgres import postgres_cluster

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "sqlite-pipeline", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    """The ``database`` settings of a storage test: on SQLite (a file) the portable path and the fast path (the
    pipeline and the direct reads: ``database.sqlite_pipeline``, ``sqlite_direct_reads``), and on PostgreSQL (a
    fresh database in the throwaway cluster)."""
    if request.param == "postgresql":
        return {"url": str(request.getfixturevalue("pg_cluster").create_database())}
    fast = request.param == "sqlite-pipeline"
    return {"url": f"sqlite:///{tmp_path / 'gw.db'}", "sqlite_pipeline": fast, "sqlite_direct_reads": fast}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same storage test on SQLite (a file) and on PostgreSQL (a fresh database in the throwaway cluster)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gw.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    return str(cluster.create_database())
