"""The HTTP API (FastAPI): payments, accounts, meters, commands, health."""
