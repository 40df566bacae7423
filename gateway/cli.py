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
app.add_typer(simulate, name="simulate")
app.add_typer(keys, name="keys")
app.add_typer(ledger, name="ledger")

ROLES = ("viewer", "billing", "operator", "admin")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("pymodbus", "uvicorn.access", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        typer.echo(f"configuration error:\n{exc}", err=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(file: Path) -> None:
    """Validate a settings file (and the meter models it names); exit 2 with the problems if it is bad."""
    from gateway.bootstrap import check_models

    settings = _load(file)
    try:
        check_models(settings, base_dir=file.resolve().parent)
    except (ValueError, OSError) as exc:
        typer.echo(f"configuration error:\n{file}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{file}: OK ({len(settings.accounts)} accounts, {len(settings.meters)} meters on "
               f"{len(settings.buses)} buses, {len(settings.tariffs)} tariffs)")


@app.command()
def run(config: Annotated[Path, typer.Option("--config", "-c", help="the settings file")],
        log_level: str = "INFO") -> None:
    """Run the gateway (buses, balance engine, API) of a settings file until Ctrl-C or SIGTERM."""
    _setup_logging(log_level)
    settings = _load(config)
    from gateway.runtime import serve

    asyncio.run(serve(settings, base_dir=config.resolve().parent))


@app.command()
def demo(port: Annotated[int, typer.Option(help="API port")] = 8080,
         data_dir: Annotated[Path, typer.Option(help="where the config, keys and database go")] = Path("var/demo"),
         meters: Annotated[int, typer.Option(help="simulated meters (first start only)")] = 8,
         log_level: str = "INFO") -> None:
    """Simulated fleet + gateway + API on 127.0.0.1; a second start reuses the same config and database."""
    _setup_logging(log_level)
    from gateway.demo import run_demo

    asyncio.run(run_demo(port=port, data_dir=data_dir, meters=meters))


@simulate.command("modbus")
def simulate_modbus(meters: Annotated[int, typer.Option(min=1, max=247)] = 1,
                    port: int = 5020, host: str = "127.0.0.1", seed: int = 0,
                    speed: Annotated[float, typer.Option(help="simulated seconds per real second")] = 1.0,
                    model: Annotated[Path | None, typer.Option(help="a meter model file")] = None) -> None:
    """Serve N simulated prepaid meters (unit ids 1..N) over Modbus TCP."""
    _setup_logging()
    from simulators.modbus import serve_modbus

    typer.echo(f"serving {meters} simulated meters on {host}:{port} (unit ids 1..{meters})")
    asyncio.run(serve_modbus(model_path=str(model) if model else None, meters=meters, host=host, port=port,
                             seed=seed, speed=speed))


@simulate.command("dlt645")
def simulate_dlt645(meters: Annotated[int, typer.Option(min=1)] = 1,
                    serial: Annotated[str | None, typer.Option(help="serial device path")] = None,
                    tcp: Annotated[str | None, typer.Option(help="HOST:PORT to listen on")] = None,
                    baud: int = 2400, pace: Annotated[bool, typer.Option(help="emulate line timing")] = False,
                    seed: int = 0) -> None:
    """Serve N simulated DL/T 645-2007 meters on one bus (a serial port or a TCP listener)."""
    if (serial is None) == (tcp is None):
        typer.echo("give exactly one of --serial PATH or --tcp HOST:PORT", err=True)
        raise typer.Exit(2)
    _setup_logging()
    from simulators.dlt645 import serve_dlt645

    asyncio.run(serve_dlt645(meters=meters, serial=serial, tcp=tcp, baud=baud, pace=pace, seed=seed))


@keys.command("create")
def keys_create(role: Annotated[str, typer.Option(help="viewer, billing, operator or admin")],
                name: Annotated[str, typer.Option(help="who the key is for (shown in the audit log)")],
                config: Annotated[Path | None, typer.Option(help="store the key in this gateway's database")] = None,
                ) -> None:
    """Make a new API key. It is printed once; only its SHA-256 is stored."""
    if role not in ROLES:
        typer.echo(f"role must be one of {', '.join(ROLES)}", err=True)
        raise typer.Exit(2)
    key = secrets.token_urlsafe(24)
    digest = hash_key(key)
    if config is not None:
        from gateway.runtime import store_key

        asyncio.run(store_key(_load(config), base_dir=config.resolve().parent, name=name, role=role, digest=digest))
        typer.echo(f"stored key {name!r} ({role}) in the database")
    else:
        typer.echo("add this to api.keys in the settings file:")
        typer.echo(f"  - {{name: {name}, role: {role}, sha256: {digest}}}")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
