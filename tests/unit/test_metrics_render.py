"""The metrics registry over a fake ``MetricRows``: the ledger's new entries are added once per scrape, and a
database that fails leaves the last figures and ``gateway_database_up 0`` instead of failing the scrape."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.service.metrics import GatewayMetrics, MetricRows, StoredFigures


class FakeRows(MetricRows):
    def __init__(self) -> None:
        self.newest, self.new_entries, self.down = 10, 0, False

    async def newest_ledger_entry(self) -> int:
        return self.newest

    async def fleet(self) -> tuple[dict[tuple[str, str], tuple[int, int]], dict[tuple[str, str], int]]:
        if self.down:
            raise OSError("database unavailable")
        return {("open", "connected"): (2, 700)}, {("queued", "open"): 1}

    async def figures(self, *, ledger_after: int | None, outbox: bool) -> StoredFigures:
        if self.down:
            raise OSError("database unavailable")
        ledger = {"charge": (self.new_entries, 7 * self.new_entries)} if self.new_entries else {}
        assert ledger_after == self.newest  # (counted from where the last scrape ended)
        self.newest += self.new_entries
        self.new_entries = 0
        return StoredFigures(accounts_total=2, balance_total=700, ledger=ledger, ledger_to=self.newest,
                             unpublished=3 if outbox else None)


async def scrape(metrics: GatewayMetrics) -> dict[str, float]:
    text = (await metrics.render()).decode()
    return {s.name + str(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_ledger_entries_add_up_and_a_failing_database_keeps_the_last_figures() -> None:
    rows = FakeRows()
    metrics = GatewayMetrics(rows, publishing=True)
    await metrics.start()
    rows.new_entries = 3
    first = await scrape(metrics)
    assert first["gateway_ledger_entries_total[('kind', 'charge')]"] == 3
    assert first["gateway_ledger_amount_fen_total[('kind', 'charge')]"] == 21
    assert first["gateway_outbox_unpublished[]"] == 3 and first["gateway_database_up[]"] == 1
    rows.new_entries = 2
    assert (await scrape(metrics))["gateway_ledger_entries_total[('kind', 'charge')]"] == 5
    rows.down = True
    down = await scrape(metrics)
    assert down["gateway_database_up[]"] == 0
    assert down["gateway_ledger_entries_total[('kind', 'charge')]"] == 5
    assert down["gateway_balance_total_fen[]"] == 700
    assert down["gateway_commands_active[('action', 'open'), ('state', 'queued')]"] == 1
    rows.down = False
    assert (await scrape(metrics))["gateway_database_up[]"] == 1
