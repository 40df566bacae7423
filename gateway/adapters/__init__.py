"""Adapters: storage (SQLite, PostgreSQL), MQTT publisher, notifiers."""
