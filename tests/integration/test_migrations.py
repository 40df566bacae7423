"""The migrations build exactly the schema gateway/adapters/tables.py declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.adapters.database import create_engine, migrate
from gateway.adapters.tables import metadata


async def test_migrations_match_the_declared_tables(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        await migrate(engine)  # a second run is a no-op

        def diff(conn):  # type: ignore[no-untyped-def]
            return compare_metadata(MigrationContext.configure(conn), metadata)

        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
        assert differences == []
    finally:
        await engine.dispose()
