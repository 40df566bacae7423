"""A throwaway PostgreSQL cluster for the tests (initdb + pg_ctl on a free port, removed afterwards)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import IN_CI, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _pg_tool(name: str) -> str:
    candidates = [PG_BIN / name, *sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)]
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    msg = f"PostgreSQL's {name} is not installed (make test installs postgresql via apt-get when root)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses root: run the server tools as the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PostgresCluster:
    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self) -> str:
        """A new empty database; returns its URL (postgresql://...)."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def psql(self, sql: str) -> str:
        psql = shutil.which("psql") or _pg_tool("psql")
        result = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-v",
                                 "ON_ERROR_STOP=1", "-Atc", sql], capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout


@contextlib.contextmanager
def postgres_cluster(*, fsync: bool = False) -> Iterator[PostgresCluster]:
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                                 "--locale=C.UTF-8", "-N"]), check=True, capture_output=True, timeout=120)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync={'on' if fsync else 'off'}"
    subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o", options, "start"]),
                   check=True, capture_output=True, timeout=120)
    try:
        yield PostgresCluster(root, port)
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
