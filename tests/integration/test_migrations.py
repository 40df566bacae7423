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


async def test_0002_names_old_payment_entries_by_their_pair(db_url: str) -> None:
    """Ledger entries written before 0002 name their payment by the label "source/payment_id"; the migration
    fills the pair from the payments table (charges and other entries keep none)."""
    import datetime as dt

    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from gateway.adapters.database import MIGRATIONS
    from gateway.adapters.sql import SqlStorage
    from gateway.service.verify import verify_ledger

    engine = create_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def upgrade_to(revision: str):  # type: ignore[no-untyped-def]
        def run(sync_conn):  # type: ignore[no-untyped-def]
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, revision)
        return run

    now = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_to("0001"))
            await conn.execute(sa.text(
                "INSERT INTO accounts (id, balance_fen, supply, deferred_reason, state, version, updated_at) "
                "VALUES ('A-1', 4000, 'connected', '', '{}', 1, :now)"), {"now": now.replace(tzinfo=None)})
            await conn.execute(sa.text(
                "INSERT INTO payments (source, payment_id, account_id, amount_fen, balance_after_fen, received_at) "
                "VALUES ('bank', '2026/11/7', 'A-1', 5000, 5000, :now)"), {"now": now.replace(tzinfo=None)})
            for kind, amount, after, reference in [("payment", 5000, 5000, "bank/2026/11/7"),
                                                   ("repayment", -1000, 4000, "bank/2026/11/7"),
                                                   ("charge", 0, 4000, "M-1")]:
                await conn.execute(sa.text(
                    "INSERT INTO ledger_entries (account_id, kind, amount_fen, balance_after_fen, created_at, "
                    "reference) VALUES ('A-1', :kind, :amount, :after, :now, :reference)"),
                    {"kind": kind, "amount": amount, "after": after, "now": now.replace(tzinfo=None),
                     "reference": reference})
        await migrate(engine)
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text(
                "SELECT kind, payment_source, payment_id FROM ledger_entries ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [("payment", "bank", "2026/11/7"), ("repayment", "bank", "2026/11/7"),
                                            ("charge", None, None)]
        async with SqlStorage(engine)(readonly=True) as uow:
            assert await verify_ledger(uow) == []
    finally:
        await engine.dispose()


async def test_0006_a_fleet_of_an_older_version_gets_the_settings_configuration(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Accounts and meters made before 0006 have no configuration in their rows: the first start takes the
    settings' (nothing reported, the balance and the ledger as they were, no second opening entry)."""
    import datetime as dt

    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from gateway.adapters.database import MIGRATIONS
    from gateway.bootstrap import Gateway
    from gateway.settings import Settings

    engine = create_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))

    def upgrade(sync_conn):  # type: ignore[no-untyped-def]
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "0005")

    now = dt.datetime(2026, 11, 23, tzinfo=dt.UTC).replace(tzinfo=None)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
            await conn.execute(sa.text(
                "INSERT INTO accounts (id, balance_fen, supply, deferred_reason, state, version, updated_at) "
                "VALUES ('A-1', 4000, 'connected', '', :state, 3, :now)"),
                {"now": now, "state": '{"version": 1, "balance_fen": 4000, "supply": "connected"}'})
            await conn.execute(sa.text("INSERT INTO meters (id, account_id) VALUES ('M-1', 'A-1')"))
            await conn.execute(sa.text(
                "INSERT INTO ledger_entries (account_id, kind, amount_fen, balance_after_fen, created_at, reference) "
                "VALUES ('A-1', 'opening', 4000, 4000, :now, 'settings')"), {"now": now})
    finally:
        await engine.dispose()
    settings = Settings.model_validate({
        "database": {"url": db_url}, "tariffs": {"flat": {"kind": "flat", "price": "0.5600"}},
        "accounts": [{"id": "A-1", "tariff": "flat", "opening_balance": "40.00", "warning1": "30.00"}],
        "buses": [{"id": "b", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": 1}],
        "meters": [{"id": "M-1", "bus": "b", "unit_id": 7, "account": "A-1"}]})
    async with Gateway(settings, base_dir=tmp_path, run_buses=False) as gateway:
        assert await gateway.prepare_fleet() == []  # filled in at the start; nothing differs now
        spec = gateway.catalog.accounts["A-1"]
        assert (spec.meter_ids, spec.thresholds.warning1_fen) == (("M-1",), 3000)
        assert gateway.catalog.meters["M-1"].unit_id == 7
        view = await gateway.service.views.account("A-1")
        assert view["balance"] == "40.00"
        async with gateway.uow(readonly=True) as uow:
            kinds = (await uow.execute(sa.text("SELECT kind FROM ledger_entries"))).scalars().all()
        assert kinds == ["opening"]
