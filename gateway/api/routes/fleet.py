"""The fleet as data: open, change and close accounts; add, move, swap (换表) and retire meters; move customers in;
bulk import and export (CSV, JSON Lines). Role ``provisioning`` (billing integrations) or ``admin``. Each change is
one transaction with its ledger entries, audit row and event (``gateway.service.lifecycle``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response

from gateway.api.deps import ProvisioningCaller, ServiceDep
from gateway.api.fields import Name
from gateway.api.fleet_schemas import (
    AccountChange,
    AccountClose,
    AccountCreate,
    CloseResult,
    ImportResult,
    MeterChange,
    MeterCreate,
    MeterMoveIn,
    MeterRetire,
    MeterSwap,
    MoveInResult,
    RetireResult,
    SwapResult,
    TariffChange,
)
from gateway.api.jsonbody import StrictJsonRoute
from gateway.api.problems import AUTHENTICATED, Problem, responses
from gateway.api.schemas import AccountPublic, MeterPublic
from gateway.domain.money import AmountError, format_fen, parse_yuan
from gateway.fleet_files import account_config, dump_rows, meter_spec, read_rows
from gateway.service.fleet_io import export_fleet, import_fleet
from gateway.service.facade import Service

router = APIRouter(tags=["fleet"], route_class=StrictJsonRoute)
files = APIRouter(tags=["fleet"])
IMPORT_PATH = "/v1/fleet/import"
AccountId = Annotated[Name, Path(examples=["A-1"])]
MeterId = Annotated[Name, Path(examples=["M-1"])]
_CHANGE = responses(*AUTHENTICATED, "not-found", "fleet-conflict", "account-state-unreadable", "conflict",
                    "content-too-large", "unavailable")


async def _account(service: Service, account_id: str) -> AccountPublic:
    return AccountPublic.model_validate(await service.views.account(account_id))


async def _meter(service: Service, meter_id: str) -> MeterPublic:
    return MeterPublic.model_validate(await service.views.meter(meter_id))


@router.post("/v1/accounts", status_code=201, response_model=AccountPublic, responses=_CHANGE)
async def open_account(body: AccountCreate, service: ServiceDep, caller: ProvisioningCaller) -> AccountPublic:
    """Open an account: its opening balance (a ledger entry), contacts, credit class, protection, and meters
    (each polled within its poll interval, billed from its first reading)."""
    meters = [meter_spec(m.model_copy(update={"account": body.id})) for m in body.meters]
    await service.lifecycle.open_account(account_config(body), meters=meters, actor=caller.name)
    return await _account(service, body.id)


@router.patch("/v1/accounts/{account_id}", response_model=AccountPublic, responses=_CHANGE)
async def change_account(account_id: AccountId, body: AccountChange, service: ServiceDep,
                         caller: ProvisioningCaller) -> AccountPublic:
    """Change an open account's thresholds, credit class, protection or contacts (the engine decides again)."""
    fields: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name in ("warning1", "warning2", "reconnect_min_topup", "overdraft"):
            fields[f"{name}_fen"] = None if value is None else _fen(name, value)
        elif name == "contacts":
            fields[name] = tuple(c.domain() for c in value or ())
        elif value is not None:
            fields[name] = value
    await service.lifecycle.update_account(account_id, fields, actor=caller.name)
    return await _account(service, account_id)


@router.post("/v1/accounts/{account_id}/tariff-change", response_model=AccountPublic, responses=_CHANGE)
async def change_tariff(account_id: AccountId, body: TariffChange, service: ServiceDep,
                        caller: ProvisioningCaller) -> AccountPublic:
    """Price the account's energy at another tariff from ``effective_at`` on (before it, at the current one)."""
    await service.lifecycle.change_tariff(account_id, body.tariff, body.effective_at, actor=caller.name)
    return await _account(service, account_id)


@router.post("/v1/accounts/{account_id}/close", response_model=CloseResult, responses=_CHANGE)
async def close_account(account_id: AccountId, body: AccountClose, service: ServiceDep,
                        caller: ProvisioningCaller) -> CloseResult:
    """Close an account: final readings billed, the remaining balance settled (a refund, or arrears taken over),
    its meters' relays left as asked."""
    final = {r.meter_id: r.final_wh for r in body.final_readings}
    out = await service.lifecycle.close_account(account_id, final_wh=final, at=body.at,
                                                relay=body.relay, reason=body.reason or "", actor=caller.name)
    return CloseResult(account=await _account(service, account_id), charged=format_fen(out["charged_fen"]),
                       settled=format_fen(out["settled_fen"]), commands=out["commands"])


@router.post("/v1/meters", status_code=201, response_model=MeterPublic, responses=_CHANGE)
async def add_meter(body: MeterCreate, service: ServiceDep, caller: ProvisioningCaller) -> MeterPublic:
    """Add a meter to an open account: polled within one poll interval."""
    await service.lifecycle.add_meter(meter_spec(body), initial_wh=body.initial_wh, at=body.at, actor=caller.name)
    return await _meter(service, body.id)


@router.patch("/v1/meters/{meter_id}", response_model=MeterPublic, responses=_CHANGE)
async def change_meter(meter_id: MeterId, body: MeterChange, service: ServiceDep,
                       caller: ProvisioningCaller) -> MeterPublic:
    """Move a meter (bus, unit id, address) or change its model, poll interval, capacity or groups: polled at its
    new place from its next poll, billed on without a gap."""
    names = {"bus": "bus_id"}
    fields = {names.get(k, k): (tuple(v) if k == "groups" else v) for k in body.model_fields_set
              if (v := getattr(body, k)) is not None or k in ("unit_id", "address")}
    await service.lifecycle.update_meter(meter_id, fields, actor=caller.name)
    return await _meter(service, meter_id)


@router.post("/v1/meters/{meter_id}/retire", response_model=RetireResult, responses=_CHANGE)
async def retire_meter(meter_id: MeterId, body: MeterRetire, service: ServiceDep,
                       caller: ProvisioningCaller) -> RetireResult:
    """Retire a meter: its final reading billed, no longer polled (its readings and ledger stay)."""
    charged = await service.lifecycle.retire_meter(meter_id, final_wh=body.final_wh, at=body.at, actor=caller.name)
    return RetireResult(meter_id=meter_id, charged=format_fen(charged))


@router.post("/v1/meters/{meter_id}/swap", response_model=SwapResult, responses=_CHANGE)
async def swap_meter(meter_id: MeterId, body: MeterSwap, service: ServiceDep, caller: ProvisioningCaller) -> SwapResult:
    """换表: replace the meter by a new one, billing continuously across the swap."""
    new = meter_spec(body.new_meter.model_copy(update={"account": "-"}))  # (the replaced meter's, below)
    out = await service.lifecycle.swap_meter(meter_id, new, final_wh=body.final_wh, initial_wh=body.initial_wh,
                                             at=body.at, relay=body.relay, actor=caller.name, reason=body.reason)
    meter = await _meter(service, new.id)
    return SwapResult(account=await _account(service, meter.account_id), meter=meter,
                      charged=format_fen(out["charged_fen"]), final_wh=out["final_wh"], initial_wh=out["initial_wh"],
                      command_id=out["command"])


@router.post("/v1/meters/{meter_id}/move-in", response_model=MoveInResult, responses=_CHANGE)
async def move_in(meter_id: MeterId, body: MeterMoveIn, service: ServiceDep,
                  caller: ProvisioningCaller) -> MoveInResult:
    """A new customer on the meter: the previous account's final reading (and its closing), a new account billed
    from that reading."""
    out = await service.lifecycle.move_in(meter_id, account_config(body.account), reading_wh=body.reading_wh,
                                          at=body.at, close_previous=body.close_previous, relay=body.relay,
                                          actor=caller.name)
    return MoveInResult(account=await _account(service, body.account.id), previous_account=out["previous_account"],
                        reading_wh=out["reading_wh"], command_id=out["command"])


# --- bulk -----------------------------------------------------------------------------------------------------
_FORMATS = {"text/csv": "csv", "application/x-ndjson": "jsonl", "application/jsonl": "jsonl"}


@files.post(IMPORT_PATH, response_model=ImportResult,
            responses=responses(*AUTHENTICATED, "fleet-conflict", "content-too-large", "unavailable"),
            openapi_extra={"requestBody": {"required": True, "content": {
                "text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}}}})
async def import_rows(request: Request, service: ServiceDep, caller: ProvisioningCaller,
                      kind: Annotated[Literal["accounts", "meters"], Query(description="what the rows are")],
                      dry_run: Annotated[bool, Query(description="check only")] = False,
                      partial: Annotated[bool, Query(description="import the good rows, report the others")] = False,
                      update: Annotated[bool, Query(description="rows that differ change the fleet (what PATCH "
                                                                "may change)")] = False) -> ImportResult:
    """Import accounts or meters from CSV (``text/csv``) or JSON Lines (``application/x-ndjson``): every row
    checked first, each error with its row (line) and field; all or nothing unless ``partial``. Rows equal to
    the fleet's are left as they are (importing twice changes nothing)."""
    fmt = _FORMATS.get(request.headers.get("content-type", "").split(";")[0].strip().lower())
    if fmt is None:
        raise Problem("validation-error", "the body is text/csv or application/x-ndjson",
                      errors=[{"loc": ["header", "content-type"], "msg": "text/csv or application/x-ndjson"}])
    try:
        text = (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Problem("validation-error", "the body is not UTF-8",
                      errors=[{"loc": ["body"], "msg": "not UTF-8"}]) from None
    rows, errors = read_rows(kind[:-1], text, fmt)
    accounts, meters = (rows, []) if kind == "accounts" else ([], rows)
    report = await import_fleet(service.lifecycle.fleet, accounts, meters, actor=caller.name, partial=partial,
                                dry_run=dry_run, update=update, errors=errors)
    return ImportResult.model_validate(report.as_dict())


@files.get("/v1/fleet/export", responses=responses(*AUTHENTICATED), response_class=Response,
           openapi_extra={"responses": {"200": {"content": {"text/csv": {"schema": {"type": "string"}},
                                                            "application/x-ndjson": {"schema": {"type": "string"}}}}}})
async def export_rows(service: ServiceDep, caller: ProvisioningCaller,
                      kind: Annotated[Literal["accounts", "meters"], Query(examples=["accounts"])],
                      format: Annotated[Literal["csv", "jsonl"], Query(examples=["csv"])] = "csv") -> Response:
    """The open accounts (their current balance as the opening balance) or their meters, in the shape the import
    reads: a site moves between instances with them."""
    accounts, meters = await export_fleet(service.lifecycle.fleet)
    body = dump_rows(kind[:-1], accounts if kind == "accounts" else meters, format)
    return Response(body, media_type="text/csv" if format == "csv" else "application/x-ndjson")


def _fen(name: str, value: str) -> int:
    try:
        return parse_yuan(value, allow_zero=True, allow_negative=False)
    except AmountError as exc:
        raise Problem("validation-error", f"{name}: {exc}", errors=[{"loc": ["body", name], "msg": str(exc)}]) from None

