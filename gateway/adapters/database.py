"""Engine creation (SQLite in WAL mode with full durability, or PostgreSQL) and migrations."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.adapters.bulk import dumps_json

__all__ = ["async_url", "create_engine", "migrate", "private_files"]

JSON_CODEC: dict[str, Any] = {"json_serializer": dumps_json, "json_deserializer": orjson.loads}

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK = 0x6D6574657267  # PostgreSQL advisory lock held while one instance migrates


def async_url(url: str) -> str:
    """Map the configured DSN to its asyncio driver: aiosqlite for SQLite, asyncpg for PostgreSQL."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    return url


IMMEDIATE = "gateway.begin_immediate"  # a connection's ``info`` key: its next transaction takes the write lock


def create_engine(url: str) -> AsyncEngine:
    """An AsyncEngine; SQLite files get WAL, synchronous=FULL (a commit is on disk) and a busy timeout."""
    url = async_url(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        if path and path != ":memory:":
            private_files(Path(path))
        engine = create_async_engine(url, connect_args={"timeout": 30}, use_insertmanyvalues=False, **JSON_CODEC)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            # The driver's own transaction handling begins a transaction only before a statement it recognises
            # as INSERT, UPDATE or DELETE by its first word: a ``WITH ... UPDATE`` (the portable path's UPDATE
            # FROM VALUES) or a SELECT would run outside it, committed at once. SQLAlchemy begins them instead.
            dbapi_conn.isolation_level = None

        @sa.event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # A unit of work that writes takes SQLite's write lock as it begins (``IMMEDIATE``, waiting up to the
            # busy timeout): one that read first would be refused at once, not made to wait, if another
            # connection wrote meanwhile (a CLI import, a second gateway on the file).
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.pop(IMMEDIATE, False) else "BEGIN")

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, **JSON_CODEC)


def private_files(path: Path) -> None:
    """Create the SQLite file readable by its owner only (0600), and make an existing one (and its -wal and -shm
    files) so: the ledger and the API key digests are nobody else's business. SQLite gives the -wal and -shm
    files it creates later the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def upgrade(sync_conn: sa.Connection) -> None:
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # two instances starting together: one migrates, then the other
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        await conn.run_sync(upgrade)
