"""Use cases, and the ports they work through.

    facade         the ``Service`` facade: payments and reversals, readings, operator changes, relay commands
    writer         group commit of everything that changes an account (queue, futures, retry)
    views          read models for the API, over the ``ReadStore`` port
    operator       manual relay commands and their cancellation
    commands       relay command rows: create, save, recover
    relay_runner   runs the relay model (domain/relay) against a meter driver
    scheduler      one poller and one relay runner per bus; recovery at start
    polling/       the poll schedule, circuit breaker, meter health and bus statistics
    messagebus     reactions registered as data (see bootstrap)
    catalog        the static site: accounts, meters, tariffs, policy and limits
    accounts       account rows and the in-memory account cache
    uow            the unit of work (one transaction)
    clock          the Clock port (a fake one in tests)
    verify         `ledger verify`

Events are written to the outbox table in the same transaction as the change; nothing publishes them yet.
"""
