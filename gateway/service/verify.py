"""The ledger invariant: every account's balance equals the sum of its ledger entries, and every entry's
``balance_after`` is the running sum."""

from __future__ import annotations

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.service.uow import UnitOfWork

__all__ = ["verify_ledger"]


async def verify_ledger(uow: UnitOfWork) -> list[str]:
    """Problems found (an empty list means the ledger is consistent)."""
    problems: list[str] = []
    balances = {row.id: row.balance_fen for row in await uow.execute(sa.select(t.accounts.c.id,
                                                                                t.accounts.c.balance_fen))}
    running: dict[str, int] = {}
    rows = await uow.execute(sa.select(t.ledger.c.id, t.ledger.c.account_id, t.ledger.c.amount_fen,
                                       t.ledger.c.balance_after_fen).order_by(t.ledger.c.id))
    for row in rows:
        total = running.get(row.account_id, 0) + row.amount_fen
        running[row.account_id] = total
        if total != row.balance_after_fen:
            problems.append(f"entry {row.id} of {row.account_id}: balance_after {row.balance_after_fen} "
                            f"but the entries sum to {total}")
    for account_id, balance in balances.items():
        if running.get(account_id, 0) != balance:
            problems.append(f"account {account_id}: balance {balance} but its entries sum to "
                            f"{running.get(account_id, 0)}")
    credited: dict[tuple[str, str], int] = {}
    for row in await uow.execute(sa.select(t.ledger.c.payment_source, t.ledger.c.payment_id, t.ledger.c.amount_fen)
                                 .where(t.ledger.c.kind == "payment")):
        key = (row.payment_source, row.payment_id)
        credited[key] = credited.get(key, 0) + row.amount_fen
    for row in await uow.execute(sa.select(t.payments.c.source, t.payments.c.payment_id, t.payments.c.amount_fen)):
        key = (row.source, row.payment_id)
        if credited.pop(key, None) != row.amount_fen:
            problems.append(f"payment {key} has no matching ledger entry (or more than one)")
    problems += [f"ledger payment entry {key} has no payment record" for key in credited]
    return problems
