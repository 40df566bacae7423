"""Pure rules of the gateway: money, tariffs, prepaid accounts (the balance engine), policy and events.

Nothing here does I/O or reads the clock; ``now`` is always an argument. Only the standard library is imported.

    money            integer fen, Decimal prices, the one rounding rule (ROUND_HALF_UP)
    tariffs          flat, tiered, time of use, tiered time of use; billing periods
    tariff_config    tariffs from configuration data (tariff_from_dict)
    energy           splitting energy between readings over periods and rates (exact, largest remainder)
    billing          per-period accounting: charge = cost of the period so far - already charged
    metering         meter cursors, plausibility, quarantined readings
    calendar         holiday calendar file format, friendly-credit windows
    policy           SitePolicy (site-wide settings) and the automatic-disconnect RateLimiter
    policy_config    SitePolicy from configuration data (site_policy_from_dict)
    guardrails       when an automatic disconnect is refused, and until when
    emergency        emergency credit and its repayment
    ledger           LedgerEntry: what the service writes to the ledger
    account          PrepaidAccount (with account_readings and account_money), Thresholds, Supply, Decision
    state            the account's state as one JSON-able dict
    events, errors   domain events; business errors
"""
