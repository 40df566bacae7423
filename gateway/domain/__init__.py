"""Pure rules of the gateway: money, tariffs, prepaid accounts (the balance engine), commands and events.

Nothing here does I/O or reads the clock; ``now`` is always an argument. Only the standard library is imported.
"""
