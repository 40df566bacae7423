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
