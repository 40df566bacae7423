"""Accounts and meters as rows of CSV or JSON Lines files: read (each row validated like the settings file's
``accounts:`` and ``meters:`` entries, errors with their line and field) and written (the same shapes).

Columns are the settings file's keys. In CSV an empty cell is a key left out (its default), ``groups`` are
separated by ``;`` and ``contacts`` is a JSON list; amounts are yuan (``"20.00"``). A JSON Lines row is one object
per line. Row numbers are line numbers (in a CSV file the header is line 1).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable
from typing import Any

from pydantic import Field, ValidationError

from gateway.strict_json import strict_loads
from gateway.domain.money import format_fen
from gateway.service.catalog import AccountConfig, MeterSpec
from gateway.service.errors import FleetInvalid, RowError
from gateway.settings import AccountSettings, MeterSettings
from gateway.settings.outbound import ContactSettings

__all__ = ["ACCOUNT_COLUMNS", "METER_COLUMNS", "AccountRow", "MeterRow", "account_config", "dump_rows", "meter_spec",
           "read_rows"]


class AccountRow(AccountSettings):
    """An account to provision: the settings file's entry, and a tariff change to come."""

    tariff_next: str | None = Field(None, description="a tariff from tariff_next_at on")
    tariff_next_at: dt.datetime | None = None


class MeterRow(MeterSettings):
    """A meter to provision: the settings file's entry."""


ACCOUNT_COLUMNS = ("id", "tariff", "opening_balance", "warning1", "warning2", "credit_class", "overdraft",
                   "reconnect_min_topup", "protected", "contacts", "tariff_next", "tariff_next_at")
METER_COLUMNS = ("id", "account", "bus", "unit_id", "address", "model", "groups", "poll_interval_s", "max_power_w")
_MODELS: dict[str, type[AccountSettings | MeterSettings]] = {"account": AccountRow, "meter": MeterRow}


def account_config(a: AccountSettings) -> AccountConfig:
    """An account of the settings (or of a row) as the fleet stores it."""
    contacts = tuple(c.domain() for c in a.contacts)
    return AccountConfig(a.id, a.tariff, a.opening_balance, a.warning1, a.warning2, a.overdraft,
                         a.reconnect_min_topup, a.credit_class, a.protected, contacts,
                         getattr(a, "tariff_next", None), _utc(getattr(a, "tariff_next_at", None)))


def meter_spec(m: MeterSettings) -> MeterSpec:
    """A meter of the settings (or of a row) as the fleet stores it."""
    return MeterSpec(m.id, m.account, m.bus, float(m.poll_interval_s), m.max_power_w, m.unit_id, m.address, m.model,
                     tuple(m.groups))


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """An aware time in UTC, from 2000 to 2099 (as the API takes them: every such time converts and adds up
    without overflow wherever it is used later)."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("a time needs its zone (UTC: Z)")
    try:
        utc = value.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or not 2000 <= utc.year <= 2099:
        raise ValueError("a time from 2000 to 2099")
    return utc


def read_rows(kind: str, data: str, fmt: str) -> tuple[list[tuple[int, Any]], list[RowError]]:
    """The rows of ``kind`` (account or meter) in ``data`` (``fmt``: csv or jsonl) as (line, AccountConfig or
    MeterSpec), and the errors of the rows that are not valid. ``FleetInvalid`` for a file that has no rows to
    read (empty, or a CSV header without ``id`` or with an unknown column)."""
    model = _MODELS[kind]
    rows, errors = [], []
    if not data.strip():
        raise FleetInvalid([RowError(kind, 1, "", "the file is empty")])  # (not a row to leave out: the file)
    if fmt == "csv":
        try:
            header = next(csv.reader(io.StringIO(data)), [])
        except csv.Error as exc:
            raise FleetInvalid([RowError(kind, 1, "", f"not CSV: {exc}")]) from None
        columns = ACCOUNT_COLUMNS if kind == "account" else METER_COLUMNS
        unknown = [c for c in header if c not in columns]
        if "id" not in header or unknown:
            raise FleetInvalid([RowError(kind, 1, ", ".join(unknown) or "id", "the header's columns are "
                                         f"{', '.join(columns)} (id needed; unknown: {', '.join(unknown) or 'none'})")])
    for line, raw in (_csv(data) if fmt == "csv" else _jsonl(data)):
        if isinstance(raw, str):
            errors.append(RowError(kind, line, "", raw))
            continue
        try:
            entry = model.model_validate(raw)
            item = account_config(entry) if kind == "account" else meter_spec(entry)  # type: ignore[arg-type]
            rows.append((line, item))
        except ValidationError as exc:
            for e in exc.errors():
                where = ".".join(str(p) for p in e["loc"])
                errors.append(RowError(kind, line, where, str(e["msg"]).removeprefix("Value error, ")))
        except ValueError as exc:
            errors.append(RowError(kind, line, "tariff_next_at", str(exc)))
    return rows, errors


def _csv(data: str) -> Iterable[tuple[int, dict[str, Any] | str]]:
    reader = csv.DictReader(io.StringIO(data))
    records = iter(reader)
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a line break in an unquoted cell: the rest can't be read
            yield reader.line_num, f"not CSV: {exc}"
            return
        line = reader.line_num
        if None in record:
            yield line, "more cells than the header has columns"
            continue
        row: dict[str, Any] = {}
        for key, value in record.items():
            if value is None or value == "":
                continue
            if key == "groups":
                row[key] = [g for g in value.split(";") if g]
            elif key == "contacts":
                try:
                    row[key] = json.loads(value)
                except ValueError as exc:
                    yield line, f"contacts: not a JSON list ({exc})"
                    break
            else:
                row[key] = value
        else:
            yield line, row


def _jsonl(data: str) -> Iterable[tuple[int, dict[str, Any] | str]]:
    for line, text in enumerate(data.splitlines(), start=1):
        if not text.strip():
            continue
        try:  # as strictly as the API's bodies: no duplicate keys, NaN or lone surrogates
            row = strict_loads(text.encode("utf-8", "surrogatepass"))
        except ValueError as exc:
            yield line, f"not JSON ({exc})"
            continue
        yield line, row if isinstance(row, dict) else "not a JSON object"


def dump_rows(kind: str, items: Iterable[AccountConfig | MeterSpec], fmt: str) -> str:
    """``items`` as a CSV or JSON Lines file of ``kind``, in the shape ``read_rows`` reads."""
    columns = ACCOUNT_COLUMNS if kind == "account" else METER_COLUMNS
    rows = [_account_row(i) if isinstance(i, AccountConfig) else _meter_row(i) for i in items]
    if fmt == "jsonl":
        return "".join(json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False) + "\n"
                       for r in rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(k, v) for k, v in r.items()})
    return out.getvalue()


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "groups":
        return ";".join(value)
    if key == "contacts":
        return json.dumps(value, ensure_ascii=False) if value else ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _account_row(a: AccountConfig) -> dict[str, Any]:
    return {"id": a.id, "tariff": a.tariff, "opening_balance": format_fen(a.opening_balance_fen),
            "warning1": format_fen(a.warning1_fen), "warning2": format_fen(a.warning2_fen),
            "credit_class": a.credit_class or None,
            "overdraft": format_fen(a.overdraft_fen) if a.overdraft_fen is not None else None,
            "reconnect_min_topup": format_fen(a.reconnect_min_topup_fen), "protected": a.protected,
            "contacts": [ContactSettings.of(c).model_dump() for c in a.contacts] or None,
            "tariff_next": a.tariff_next,
            "tariff_next_at": a.tariff_next_at.isoformat().replace("+00:00", "Z") if a.tariff_next_at else None}


def _meter_row(m: MeterSpec) -> dict[str, Any]:
    return {"id": m.id, "account": m.account_id, "bus": m.bus_id, "unit_id": m.unit_id, "address": m.address,
            "model": m.model, "groups": list(m.groups) or None,
            "poll_interval_s": int(m.poll_interval_s) if m.poll_interval_s.is_integer() else m.poll_interval_s,
            "max_power_w": m.max_power_w}
