"""The fleet's configuration rows (``gateway.service.fleet_port``) on SQLAlchemy Core."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from gateway.adapters import tables as t
from gateway.adapters.repositories import Repository, chunks
from gateway.domain.notices import Contact
from gateway.service.catalog import AccountConfig, MeterSpec
from gateway.service.fleet_port import FleetRepository, FleetRows, PlaceTaken

__all__ = ["Fleet", "contact_dict"]

CATALOG = "catalog"  # the site_state row of the catalog's revision


def contact_dict(c: Contact) -> dict[str, Any]:
    return {"name": c.name, "role": c.role, "channel": c.channel, "to": c.to, "language": c.language,
            "opt_out": sorted(c.opt_out)}


def _contact(d: dict[str, Any]) -> Contact:
    return Contact(d["name"], d.get("role", "customer"), d["channel"], d["to"], d.get("language", "zh"),
                   frozenset(d.get("opt_out") or ()))


def _account_values(a: AccountConfig) -> dict[str, Any]:
    return dict(tariff=a.tariff, tariff_next=a.tariff_next, tariff_next_at=a.tariff_next_at,
                warning1_fen=a.warning1_fen, warning2_fen=a.warning2_fen, overdraft_fen=a.overdraft_fen,
                reconnect_min_topup_fen=a.reconnect_min_topup_fen, credit_class=a.credit_class,
                protected=a.protected, contacts=[contact_dict(c) for c in a.contacts] or None,
                opening_balance_fen=a.opening_balance_fen, status=a.status)


def _meter_values(m: MeterSpec) -> dict[str, Any]:
    return dict(account_id=m.account_id, bus_id=m.bus_id, unit_id=m.unit_id, address=m.address, model=m.model,
                groups=list(m.groups) or None, poll_interval_s=m.poll_interval_s, max_power_w=m.max_power_w,
                status="active", retired_at=None)


class Fleet(Repository, FleetRepository):
    async def rev(self) -> int:
        row = (await self.uow.execute(sa.select(t.site_state.c.state).where(t.site_state.c.name == CATALOG))
               ).one_or_none()
        return 0 if row is None else int(row.state["rev"])

    async def next_rev(self) -> int:
        await self.uow.execute(self.uow.insert_new(t.site_state).values(name=CATALOG, state={"rev": 0}))
        current = await self.uow.lock(t.site_state, "name", [CATALOG], "state")
        rev = int(current[CATALOG]["rev"]) + 1
        await self.uow.execute(sa.update(t.site_state).where(t.site_state.c.name == CATALOG)
                               .values(state={"rev": rev}))
        return rev

    async def changed(self, after: int) -> FleetRows:
        a, m = t.accounts.c, t.meters.c
        out = FleetRows(await self.rev())
        rows = await self.uow.execute(sa.select(
            a.id, a.tariff, a.opening_balance_fen, a.warning1_fen, a.warning2_fen, a.overdraft_fen,
            a.reconnect_min_topup_fen, a.credit_class, a.protected, a.contacts, a.tariff_next, a.tariff_next_at,
            a.status).where(a.config_rev > after).order_by(a.id))
        out.accounts = [AccountConfig(r.id, r.tariff, r.opening_balance_fen, r.warning1_fen, r.warning2_fen,
                                      r.overdraft_fen, r.reconnect_min_topup_fen, r.credit_class, bool(r.protected),
                                      tuple(_contact(c) for c in r.contacts or ()), r.tariff_next, r.tariff_next_at,
                                      r.status) for r in rows]
        rows = await self.uow.execute(sa.select(
            m.id, m.account_id, m.bus_id, m.poll_interval_s, m.max_power_w, m.unit_id, m.address, m.model,
            m.groups, m.status).where(m.config_rev > after).order_by(m.id))
        for r in rows:
            if r.status == "retired":
                out.retired.append(r.id)
            else:
                out.meters.append(MeterSpec(r.id, r.account_id, r.bus_id, r.poll_interval_s, r.max_power_w,
                                            r.unit_id, r.address, r.model, tuple(r.groups or ())))
        return out

    async def put_accounts(self, accounts: list[AccountConfig], rev: int, now: dt.datetime) -> None:
        rows = []
        for config in accounts:
            values = _account_values(config) | {"id": config.id, "config_rev": rev}
            if config.status == "closed":
                values["closed_at"] = now
            rows.append(values)
        await self.uow.update(t.accounts, "id", rows)

    async def put_meters(self, meters: list[MeterSpec], rev: int) -> None:
        m = t.meters.c
        ids = [meter.id for meter in meters]
        known: set[str] = set()
        for start, size in chunks(len(ids), 1):
            known.update((await self.uow.execute(sa.select(m.id).where(m.id.in_(ids[start:start + size]))))
                         .scalars())
        try:
            # Places first let go (a unit id two meters swap is free when the second takes it), then taken.
            await self.uow.update(t.meters, "id", [dict(id=i, unit_id=None, address=None) for i in ids if i in known])
            await self.uow.insert(t.meters, [_meter_values(meter) | {"id": meter.id, "config_rev": rev}
                                             for meter in meters if meter.id not in known])
            await self.uow.update(t.meters, "id", [_meter_values(meter) | {"id": meter.id, "config_rev": rev}
                                                   for meter in meters if meter.id in known])
        except sa.exc.IntegrityError as exc:
            raise PlaceTaken(str(exc.orig)[:300]) from exc

    async def retire_meters(self, meter_ids: list[str], rev: int, now: dt.datetime) -> None:
        await self.uow.update(t.meters, "id", [dict(id=i, status="retired", retired_at=now, config_rev=rev)
                                               for i in meter_ids])
