"""Adapters: storage on SQLAlchemy Core (SQLite, PostgreSQL).

    database     engines, pragmas, migrations
    tables       the schema
    bulk         multi-row statements
    read_store   the read models' queries (``service.views.ReadStore``)
"""
