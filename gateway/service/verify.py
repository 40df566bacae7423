"""The ledger invariant: every account's balance equals the sum of its ledger entries, and every entry's
``balance_after`` is the running sum."""

from __future__ import annotations

from gateway.service.ports import UnitOfWork

__all__ = ["check_ledger", "verify_ledger"]


async def verify_ledger(uow: UnitOfWork) -> list[str]:
    """Problems found (an empty list means the ledger is consistent)."""
    return (await check_ledger(uow))[0]


async def check_ledger(uow: UnitOfWork) -> tuple[list[str], int, int]:
    """(problems found, accounts, ledger entries)."""
    problems: list[str] = []
    balances = await uow.ledger.balances()
    running: dict[str, int] = {}
    entries = await uow.ledger.entries()
    for entry_id, account_id, amount_fen, balance_after_fen in entries:
        total = running.get(account_id, 0) + amount_fen
        running[account_id] = total
        if total != balance_after_fen:
            problems.append(f"entry {entry_id} of {account_id}: balance_after {balance_after_fen} "
                            f"but the entries sum to {total}")
    for account_id, balance in balances.items():
        if running.get(account_id, 0) != balance:
            problems.append(f"account {account_id}: balance {balance} but its entries sum to "
                            f"{running.get(account_id, 0)}")
    credited: dict[tuple[str, str], int] = {}
    for key, amount_fen in await uow.ledger.payment_credits():
        credited[key] = credited.get(key, 0) + amount_fen
    for key, amount_fen in await uow.ledger.payments():
        if credited.pop(key, None) != amount_fen:
            problems.append(f"payment {key} has no matching ledger entry (or more than one)")
    problems += [f"ledger payment entry {key} has no payment record" for key in credited]
    return problems, len(balances), len(entries)
