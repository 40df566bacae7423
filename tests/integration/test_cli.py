"""The meter-gateway command: check-config and keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_check_config_accepts_the_example() -> None:
    result = cli("check-config", "config/gateway.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK (2 accounts, 2 meters on 1 buses" in result.stdout


def test_check_config_warns_of_an_account_nobody_can_warn(tmp_path: Path) -> None:
    text = (ROOT / "config/gateway.example.yaml").read_text()
    start, end = text.index("  staff:"), text.index("  quiet_hours:")
    lonely = tmp_path / "lonely.yaml"
    lonely.write_text(text[:start] + text[end:])  # no site staff; A-1002 has no contacts
    result = cli("check-config", str(lonely))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("warning:") == 1
    assert "accounts[1] (A-1002): nobody takes its final warning" in result.stdout
    assert "warning" not in cli("check-config", "config/gateway.example.yaml").stdout


def test_check_config_names_file_key_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/gateway.example.yaml").read_text().replace("timeout_s: 1.0", "timeout: 1.0"))
    result = cli("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: buses[0].timeout: unknown key" in result.stderr


def test_check_config_unknown_meter_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/gateway.example.yaml").read_text().replace(
        "model: generic-prepaid", "model: no-such-meter"))
    result = cli("check-config", str(bad))
    assert result.returncode == 2
    assert "meters[0].model: unknown meter model 'no-such-meter'" in result.stderr


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("database: {url: 'sqlite:///gw.db'}\n")
    result = cli("keys", "create", "--role", "billing", "--name", "erp", "--config", str(config))
    assert result.returncode == 0, result.stderr
    key = result.stdout.split("key (shown once): ")[1].strip()
    import hashlib
    import sqlite3

    rows = sqlite3.connect(tmp_path / "gw.db").execute("select name, role, sha256 from api_keys").fetchall()
    assert rows == [("erp", "billing", hashlib.sha256(key.encode()).hexdigest())]
    assert key.encode() not in (tmp_path / "gw.db").read_bytes()
    assert cli("keys", "create", "--role", "root", "--name", "x").returncode == 2


def _fleet_site(tmp_path: Path) -> Path:
    config = tmp_path / "gw.yaml"
    config.write_text(f"""
database: {{url: "sqlite:///{tmp_path / 'gw.db'}"}}
tariffs: {{flat: {{kind: flat, price: "0.5600"}}}}
buses: [{{id: b, protocol: modbus-tcp, host: 127.0.0.1, port: 1}}]
""")
    return config


def test_fleet_import_checks_every_row_and_export_gives_the_same_shapes(tmp_path: Path) -> None:
    config = _fleet_site(tmp_path)
    accounts, meters = tmp_path / "accounts.csv", tmp_path / "meters.jsonl"
    accounts.write_text("id,tariff,opening_balance\nA-1,flat,20.00\nA-2,flat,5.00\nA-3,missing,1.00\n")
    meters.write_text('{"id": "M-1", "account": "A-1", "bus": "b", "unit_id": 1}\n'
                      '{"id": "M-2", "account": "A-2", "bus": "b", "unit_id": 1}\n')
    refused = cli("fleet", "import", "--config", str(config), "--accounts", str(accounts), "--meters", str(meters))
    assert refused.returncode == 1
    assert "accounts row 4: tariff: unknown tariff 'missing'" in refused.stderr
    assert "meters row 2: unit_id: 1 on bus 'b' is also row 1's (M-1)" in refused.stderr
    assert "nothing imported: 2 errors" in refused.stderr
    accounts.write_text("id,tariff,opening_balance\nA-1,flat,20.00\nA-2,flat,5.00\n")
    meters.write_text('{"id": "M-1", "account": "A-1", "bus": "b", "unit_id": 1}\n'
                      '{"id": "M-2", "account": "A-2", "bus": "b", "unit_id": 2}\n')
    dry = cli("fleet", "import", "--config", str(config), "--accounts", str(accounts), "--meters", str(meters),
              "--dry-run")
    assert dry.returncode == 0 and "would import 2 accounts and 2 meters" in dry.stdout, dry.stderr
    done = cli("fleet", "import", "--config", str(config), "--accounts", str(accounts), "--meters", str(meters))
    assert done.returncode == 0 and "imported 2 accounts and 2 meters" in done.stdout, done.stderr
    again = cli("fleet", "import", "--config", str(config), "--accounts", str(accounts), "--meters", str(meters))
    assert "imported 0 accounts and 0 meters (2 accounts and 2 meters unchanged)" in again.stdout, again.stderr
    out_accounts, out_meters = tmp_path / "out.csv", tmp_path / "out.jsonl"
    exported = cli("fleet", "export", "--config", str(config), "--accounts", str(out_accounts), "--meters",
                   str(out_meters))
    assert exported.returncode == 0, exported.stderr
    assert out_accounts.read_text().splitlines()[1:] == [
        "A-1,flat,20.00,20.00,5.00,,,1.00,false,,,", "A-2,flat,5.00,20.00,5.00,,,1.00,false,,,"]
    assert [line.count('"unit_id"') for line in out_meters.read_text().splitlines()] == [1, 1]
    verified = cli("ledger", "verify", "--config", str(config))
    assert verified.returncode == 0 and "ledger consistent: 2 accounts" in verified.stdout
