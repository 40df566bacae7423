"""Adapters: storage on SQLAlchemy Core (SQLite, PostgreSQL), behind the service's ports.

    sql              the storage ports (``service.ports``): the storage, units of work, batch writes
    repositories     accounts, meters, payments, commands, ledger, outbox: the rows, inside a unit of work
    sqlite_pipeline  the optional faster SQLite write of the writer's batches (``database.sqlite_pipeline``)
    bulk             driver statements of the pipeline; the JSON encoding of JSON columns
    account_rows     how an account is stored (its state document and query columns)
    read_store       the read models' queries (``service.views.ReadStore``)
    database         engines, pragmas, transactions, migrations
    tables           the schema
"""
