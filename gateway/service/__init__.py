"""Use cases, and the ports they work through.

    facade         the ``Service`` facade: payments and reversals, readings, operator changes, relay commands
    ports          what the service needs from storage: Storage, UnitOfWork, the repositories (abstract)
    writer         group commit of everything that changes an account (queue, futures, pipelining, retry)
    batch          one writer batch in memory: load, apply the jobs, what to write
    jobs           the writer's jobs (payment, reversal, reading, account change)
    account_cache  the writer's accounts in memory; ledger rows and outbox messages from what accounts recorded
    freshness      which readings to store (a reading that changes nothing is not)
    tamper         the meters' tamper flags as last seen; a change is a MeterTamper event
    views          read models for the API, over the ``ReadStore`` port
    operator       manual relay commands and their cancellation
    commands       relay command records and their events
    relay_runner   runs the relay model (domain/relay) against a meter driver
    scheduler      one poller and one relay runner per bus; recovery at start
    polling/       the poll schedule, circuit breaker, meter health and bus statistics
    messagebus     reactions registered as data (see bootstrap)
    catalog        the static site: accounts, meters, tariffs, policy and limits
    errors         the service's errors (the API maps them to problems in one place)
    clock          the Clock port (a fake one in tests)
    verify         `ledger verify`

Events are written to the outbox table in the same transaction as the change; nothing publishes them yet.
"""
