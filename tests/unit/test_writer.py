"""The group-commit writer against a storage kept in memory (``tests.fakes.FakeStorage``): what one batch
writes is what that batch did, even while the next batch changes the same account in memory; a batch that
finds an account changed by another writer is done again from the stored row."""

from __future__ import annotations

import asyncio
import time
import datetime as dt
from decimal import Decimal

from gateway.domain.account import Thresholds
from gateway.domain.tariffs import FlatTariff
from gateway.service.catalog import AccountSpec, Catalog, MeterSpec
from gateway.service.jobs import PaymentJob
from gateway.service.writer import Writer
from tests.fakes import T0, FakeStorage


def catalog() -> Catalog:
    return Catalog(accounts={"A-1": AccountSpec("A-1", FlatTariff(Decimal("0.56")), Thresholds(2000, 500),
                                                opening_balance_fen=1_000, meter_ids=("M-1",))},
                   meters={"M-1": MeterSpec("M-1", "A-1", "bus1")})


def setup(*, exclusive: bool) -> tuple[FakeStorage, Writer, Catalog]:
    site = catalog()
    storage = FakeStorage(exclusive=exclusive)
    storage.add(site.new_account(site.accounts["A-1"]))
    return storage, Writer(storage, site, lambda: T0, on_commands=lambda records: None), site


async def test_a_batch_writes_its_own_state_while_the_next_one_changes_the_account() -> None:
    storage, writer, _ = setup(exclusive=True)
    writer.max_batch = 1
    storage.hold.clear()
    jobs = [writer.submit(PaymentJob("billing", f"P-{n}", "A-1", 10 ** n)) for n in (1, 2, 3)]
    await asyncio.wait_for(storage.entered.wait(), 5)  # batch 1 is committing
    for _ in range(50):  # batch 2 is prepared on top of batch 1, in memory, meanwhile
        await asyncio.sleep(0)
    assert writer.cache.entries["A-1"][1].balance_fen == 1_110  # the same account object, changed again
    storage.hold.set()
    await asyncio.wait_for(asyncio.gather(*jobs), 5)
    await writer.aclose()
    assert len(storage.commits) == 3
    for commit in storage.commits:
        [(_, _, row)] = commit.accounts
        assert row["balance_fen"] == commit.ledger[-1]["balance_after_fen"]  # this batch's own balance
    assert [c.accounts[0][2]["balance_fen"] for c in storage.commits] == [1_010, 1_110, 2_110]
    assert storage.accounts["A-1"][0] == 3


async def test_an_account_changed_by_another_writer_is_done_again_from_the_stored_row() -> None:
    storage, writer, site = setup(exclusive=False)
    assert (await writer.submit(PaymentJob("billing", "P-1", "A-1", 100))).created
    other = site.account("A-1", storage.accounts["A-1"][1])  # another instance credits the account meanwhile
    other.apply_payment("billing", "P-X", 500)
    storage.accounts["A-1"] = (storage.accounts["A-1"][0] + 1, other.state_dict())
    result = await writer.submit(PaymentJob("billing", "P-2", "A-1", 10))
    await writer.aclose()
    assert result.record["balance_after_fen"] == 1_000 + 100 + 500 + 10
    assert storage.accounts["A-1"][1]["balance_fen"] == 1_610


async def test_a_batch_that_keeps_finding_its_rows_changed_is_done_under_row_locks() -> None:
    """Another instance changes the account between every read and write of the optimistic path: after two
    stale tries the batch reads its accounts locked, in the transaction that writes, and goes through."""
    storage, writer, _ = setup(exclusive=False)
    storage.busy_neighbour = True
    result = await asyncio.wait_for(writer.submit(PaymentJob("billing", "P-1", "A-1", 100)), 5)
    await writer.aclose()
    assert result.created and result.record["balance_after_fen"] == 1_100
    assert storage.accounts["A-1"][1]["balance_fen"] == 1_100


class _SlowBatch:
    """A batch whose jobs each take 0.5 ms of CPU to apply."""

    def run(self, job: object) -> object:
        end = time.perf_counter() + 0.0005
        while time.perf_counter() < end:
            pass
        return job


async def test_applying_a_long_batch_lets_the_event_loop_run_every_budget_but_not_a_short_one() -> None:
    turns = 0

    async def other_work() -> None:  # what waits for the loop meanwhile (a relay command, an HTTP request)
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()

    async def turns_during(jobs: int, budget: float) -> int:
        before = turns
        items = [(n, loop.create_future()) for n in range(jobs)]
        results = await Writer._apply(_SlowBatch(), items, pause_after_s=budget)  # type: ignore[arg-type]
        assert [value for _, ok, value in results if ok] == list(range(jobs))
        return turns - before

    try:
        assert await turns_during(40, 0.002) >= 5  # 20 ms of work: the loop ran at least every ~2 ms
        assert await turns_during(2, 0.002) == 0  # 1 ms of work: done without waiting for a turn of the loop
        assert await turns_during(40, 0.0) == 0  # no budget: one go
    finally:
        task.cancel()
