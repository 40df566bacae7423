"""The ``meter-gateway`` command."""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

from gateway.settings import ConfigError, Settings, hash_key, load_settings

app = typer.Typer(help="Remote prepaid and meter-control gateway.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
simulate = typer.Typer(help="Serve simulated meters (Modbus or DL/T 645).", no_args_is_help=True)
keys = typer.Typer(help="API keys.", no_args_is_help=True)
ledger = typer.Typer(help="The prepaid ledger.", no_args_is_help=True)
fleet = typer.Typer(help="Accounts and meters: bulk import and export (CSV or JSON Lines).", no_args_is_help=True)
app.add_typer(simulate, name="simulate")
app.add_typer(keys, name="keys")
app.add_typer(ledger, name="ledger")
app.add_typer(fleet, name="fleet")

ROLES = ("viewer", "billing", "operator", "provisioning", "admin")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("pymodbus", "uvicorn.access", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run(coro: object) -> None:
    """Run the gateway's event loop: uvloop where it is installed (the event loop is the limit under load)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(coro)  # type: ignore[arg-type]
        return
    uvloop.run(coro)  # type: ignore[arg-type]


def _checked(path: Path) -> Settings:
    """The settings of a file, with the meter models they name (exit 2 naming the file and key if bad)."""
    from gateway.site import check_models

    settings = _load(path)
    try:
        check_models(settings, base_dir=path.resolve().parent)
    except (ValueError, OSError) as exc:
        typer.echo(f"configuration error:\n{path}: {exc}", err=True)
        raise typer.Exit(2) from None
    return settings


def _check_control(control: str | None) -> None:
    """``--control HOST:PORT`` of the simulators (exit 2 if it is not one)."""
    from simulators.control import parse_host_port

    try:
        if control is not None:
            parse_host_port(control)
    except ValueError as exc:
        typer.echo(f"--control: {exc}", err=True)
        raise typer.Exit(2) from None


def _load(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(file: Path) -> None:
    """Validate a settings file (and the meter models it names); exit 2 with the problems if it is bad."""
    settings = _checked(file)
    typer.echo(f"{file}: OK ({len(settings.accounts)} accounts, {len(settings.meters)} meters on "
               f"{len(settings.buses)} buses, {len(settings.tariffs)} tariffs)")
    for warning in settings.warnings():
        typer.echo(f"{file}: warning: {warning}")


@app.command()
def run(config: Annotated[Path, typer.Option("--config", "-c", help="the settings file")],
        log_level: str = "INFO") -> None:
    """Run the gateway (buses, balance engine, API) of a settings file until Ctrl-C or SIGTERM."""
    _setup_logging(log_level)
    settings = _checked(config)
    from gateway.runtime import serve

    _run(serve(settings, base_dir=config.resolve().parent))


@app.command()
def demo(port: Annotated[int, typer.Option(help="API port")] = 8080,
         data_dir: Annotated[Path, typer.Option(help="where the config, keys and database go")] = Path("var/demo"),
         meters: Annotated[int, typer.Option(help="simulated meters (first start only)")] = 8,
         log_level: str = "INFO") -> None:
    """Simulated fleet + gateway + API on 127.0.0.1; a second start reuses the same config and database."""
    _setup_logging(log_level)
    from gateway.demo import run_demo

    _run(run_demo(port=port, data_dir=data_dir, meters=meters))


@simulate.command("modbus")
def simulate_modbus(meters: Annotated[int, typer.Option(min=1, help="simulated meters in the fleet")] = 1,
                    port: Annotated[int, typer.Option(help="first TCP port (more follow: port + 1, ...)")] = 5020,
                    host: str = "127.0.0.1", seed: int = 0,
                    speed: Annotated[float, typer.Option(help="simulated seconds per real second")] = 1.0,
                    model: Annotated[Path | None, typer.Option(help="a meter model file")] = None,
                    per_port: Annotated[int, typer.Option(min=1, max=247, help="unit ids per TCP port")] = 247,
                    rtu: Annotated[bool, typer.Option(help="RTU framing over TCP (a serial-to-Ethernet converter)")]
                    = False,
                    serial: Annotated[str | None, typer.Option(
                        help="serve RTU on this serial device or pty (or socket://HOST:PORT) instead of TCP")] = None,
                    baud: Annotated[int, typer.Option(help="baud rate of --serial")] = 9600,
                    pace: Annotated[bool, typer.Option(help="with --serial: answer no faster than the baud rate")]
                    = False,
                    faults: Annotated[str | None, typer.Option(
                        help="fault injection, e.g. 'no-answer@10%; mute@2; slow:0.8@5%; exception:4@3,7' "
                             "(meters are numbered 0.. across the fleet; see docs/simulators.md)")] = None,
                    control: Annotated[str | None, typer.Option(
                        help="HOST:PORT of the HTTP control interface (meters, faults, relay log; "
                             "see docs/simulators.md)")] = None,
                    ) -> None:
    """Serve N simulated meters (unit ids 1..per-port on each port) over Modbus TCP, RTU over TCP, or RTU."""
    _setup_logging()
    from simulators.faults import parse_faults
    from simulators.modbus import serve_modbus

    try:
        plan = parse_faults(faults, seed=seed)
    except ValueError as exc:
        typer.echo(f"--faults: {exc}", err=True)
        raise typer.Exit(2) from None
    _check_control(control)
    if serial is not None:
        if meters > 247:
            typer.echo("one RTU line has at most 247 unit ids", err=True)
            raise typer.Exit(2)
        typer.echo(f"serving {meters} simulated meters on {serial} (RTU, unit ids 1..{meters})")
    else:
        ports = (meters + per_port - 1) // per_port
        typer.echo(f"serving {meters} simulated meters on {host}:{port}..{port + ports - 1} "
                   f"({'RTU over TCP' if rtu else 'Modbus TCP'}, unit ids 1..{min(meters, per_port)} per port)")
    coroutine = serve_modbus(model_path=str(model) if model else None, meters=meters, host=host, port=port,
                             seed=seed, speed=speed, framer="rtu" if rtu else "socket", per_port=per_port,
                             serial=serial, baudrate=baud, pace=pace, faults=plan, control=control)
    if control is not None:
        typer.echo(f"control interface on http://{control}")
    try:
        import uvloop  # a simulator of thousands of meters must not be the bottleneck of a benchmark
    except ImportError:  # pragma: no cover - uvloop is not available on Windows
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


@simulate.command("dlt645")
def simulate_dlt645(meters: Annotated[int, typer.Option(min=1, help="meters on the bus, numbered 0..")] = 1,
                    serial: Annotated[str | None, typer.Option(help="serial device path")] = None,
                    tcp: Annotated[str | None, typer.Option(help="HOST:PORT to listen on")] = None,
                    baud: int = 2400, pace: Annotated[bool, typer.Option(help="emulate line timing")] = False,
                    seed: int = 0,
                    speed: Annotated[float, typer.Option(
                        min=0.001, help="simulated seconds per real second (the meters' clocks too)")] = 1.0,
                    faults: Annotated[str | None, typer.Option(
                        help="fault injection, e.g. 'no-answer@1; mute@2; relay-stuck@3' (meters numbered 0.. "
                             "on the bus; see docs/simulators.md)")] = None,
                    trip_delay: Annotated[float, typer.Option(
                        "--trip-delay", min=0.0,
                        help="real seconds between a trip (status word 3 bit 6) and the contact opening (bit 4)")]
                    = 0.0,
                    protect: Annotated[str | None, typer.Option(
                        help="meters that start in protect state (保电), e.g. '0,2-3': trips refused")] = None,
                    close_allowed: Annotated[bool, typer.Option(
                        "--close-allowed",
                        help="1BH leaves the relay open until the button is pressed (internal relay); "
                             "otherwise 1BH closes at once (external relay)")] = False,
                    control: Annotated[str | None, typer.Option(
                        help="HOST:PORT of the HTTP control interface (see docs/simulators.md)")] = None,
                    ) -> None:
    """Serve N simulated DL/T 645-2007 meters on one bus (a serial port or a TCP listener)."""
    if (serial is None) == (tcp is None):
        typer.echo("give exactly one of --serial PATH or --tcp HOST:PORT", err=True)
        raise typer.Exit(2)
    from simulators.dlt645 import serve_dlt645
    from simulators.faults import parse_faults, parse_indices

    try:
        plan = parse_faults(faults, seed=seed)
    except ValueError as exc:
        typer.echo(f"--faults: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        protected = parse_indices(protect) if protect else []
        if any(i >= meters for i in protected):
            raise ValueError(f"meters are numbered 0..{meters - 1}")
    except ValueError as exc:
        typer.echo(f"--protect: {exc}", err=True)
        raise typer.Exit(2) from None
    _check_control(control)
    _setup_logging()
    typer.echo(f"serving {meters} simulated DL/T 645 meters on {serial or tcp} "
               f"({'close-allowed waits for the button' if close_allowed else 'external relays'}, "
               f"trip delay {trip_delay:g} s, speed {speed:g})")
    if control is not None:
        typer.echo(f"control interface on http://{control}")
    asyncio.run(serve_dlt645(meters=meters, serial=serial, tcp=tcp, baud=baud, pace=pace, seed=seed, speed=speed,
                             faults=plan, trip_delay_s=trip_delay, close_allowed=close_allowed, protect=protected,
                             control=control))


@keys.command("create")
def keys_create(role: Annotated[str, typer.Option(help="viewer, billing, operator or admin")],
                name: Annotated[str, typer.Option(help="who the key is for (shown in the audit log)")],
                config: Annotated[Path | None, typer.Option(help="store the key in this gateway's database")] = None,
                source: Annotated[list[str] | None, typer.Option(
                    help="a payment source the key may post and reverse for (repeat for several); default: any")]
                = None) -> None:
    """Make a new API key. It is printed once; only its SHA-256 is stored."""
    if role not in ROLES:
        typer.echo(f"role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    key = secrets.token_urlsafe(24)
    digest = hash_key(key)
    sources = sorted(set(source)) if source else None
    if config is not None:
        from gateway.runtime import store_key

        asyncio.run(store_key(_load(config), base_dir=config.resolve().parent, name=name, role=role, digest=digest,
                              sources=sources))
        typer.echo(f"stored key {name!r} ({role}) in the database")
    else:
        typer.echo("add this to api.keys in the settings file:")
        bound = f", sources: [{', '.join(sources)}]" if sources else ""
        typer.echo(f"  - {{name: {name}, role: {role}, sha256: {digest}{bound}}}")
    typer.echo(f"key (shown once): {key}")


@ledger.command("verify")
def ledger_verify(config: Annotated[Path, typer.Option("--config", "-c", help="the settings file")]) -> None:
    """Check the ledger invariant: every balance equals the sum of its entries; every payment is credited once."""
    from gateway.runtime import verify

    problems, accounts, entries = asyncio.run(verify(_load(config), base_dir=config.resolve().parent))
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        typer.echo(f"ledger NOT consistent: {len(problems)} problems", err=True)
        raise typer.Exit(1)
    typer.echo(f"ledger consistent: {accounts} accounts, {entries} entries")


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        typer.echo(f"{path}: a .csv, .jsonl or .ndjson file", err=True)
        raise typer.Exit(2)
    return "csv" if suffix == ".csv" else "jsonl"


@fleet.command("import")
def fleet_import(config: Annotated[Path, typer.Option("--config", "-c", help="the settings file")],
                 accounts: Annotated[Path | None, typer.Option(help="accounts (.csv or .jsonl)")] = None,
                 meters: Annotated[Path | None, typer.Option(help="meters (.csv or .jsonl)")] = None,
                 dry_run: Annotated[bool, typer.Option(help="check only; change nothing")] = False,
                 partial: Annotated[bool, typer.Option(help="import the good rows, report the others")] = False,
                 update: Annotated[bool, typer.Option(
                     help="rows that differ change the fleet: an account's thresholds, credit class, protection, "
                          "contacts; a meter's place, model, poll interval, capacity, groups")] = False) -> None:
    """Import accounts and meters (docs/provisioning.md): every row checked, all or nothing unless --partial.
    A running gateway on the same database takes them within a few seconds."""
    from gateway.runtime import fleet_import as run_import
    from gateway.service.errors import FleetRefused

    files = {kind: (path.read_text(encoding="utf-8-sig"), _format(path))
             for kind, path in (("account", accounts), ("meter", meters)) if path is not None}
    if not files:
        typer.echo("give --accounts and/or --meters", err=True)
        raise typer.Exit(2)
    try:
        report = asyncio.run(run_import(_load(config), base_dir=config.resolve().parent, files=files,
                                        dry_run=dry_run, partial=partial, actor="cli", update=update))
    except FleetRefused as exc:
        for error in exc.errors:
            typer.echo(str(error), err=True)
        typer.echo(f"nothing imported: {len(exc.errors)} errors", err=True)
        raise typer.Exit(1) from None
    for error in report.errors:
        typer.echo(f"left out: {error}", err=True)
    verb = "would import" if dry_run else "imported"
    changed = (f", changed {report.accounts_changed} accounts and {report.meters_changed} meters" if update else "")
    typer.echo(f"{verb} {report.accounts_created} accounts and {report.meters_created} meters{changed} "
               f"({report.accounts_unchanged} accounts and {report.meters_unchanged} meters unchanged)")


@fleet.command("export")
def fleet_export(config: Annotated[Path, typer.Option("--config", "-c", help="the settings file")],
                 accounts: Annotated[Path | None, typer.Option(help="write the accounts here (.csv or .jsonl)")] = None,
                 meters: Annotated[Path | None, typer.Option(help="write the meters here (.csv or .jsonl)")] = None
                 ) -> None:
    """Export the open accounts (their current balance as the opening balance) and their meters."""
    from gateway.fleet_files import dump_rows
    from gateway.runtime import fleet_export as run_export

    if accounts is None and meters is None:
        typer.echo("give --accounts and/or --meters", err=True)
        raise typer.Exit(2)
    found = asyncio.run(run_export(_load(config), base_dir=config.resolve().parent))
    for kind, path, items in (("account", accounts, found[0]), ("meter", meters, found[1])):
        if path is not None:
            path.write_text(dump_rows(kind, items, _format(path)), encoding="utf-8")
            typer.echo(f"wrote {len(items)} {kind}s to {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
