from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
tariffs: {flat: {price: "0.5600"}}
accounts: [{id: A-1, tariff: flat, opening_balance: "10.00"}]
buses: [{id: bus1, protocol: modbus-tcp, host: 127.0.0.1, port: 5020}]
meters: [{id: M-1, bus: bus1, unit_id: 1, account: A-1}]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_good_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), environ={})
    assert settings.accounts[0].opening_balance == 1000
    assert settings.meters[0].unit_id == 1


def test_the_example_config_is_valid() -> None:
    settings = load_settings(ROOT / "config" / "gateway.example.yaml", environ={})
    assert settings.meters and settings.accounts


@pytest.mark.parametrize(("text", "expected"), [
    (GOOD + "bogus: 1\n", "bogus: unknown key"),
    (GOOD.replace("port: 5020", "port: 5020, colour: red"), "buses[0].colour: unknown key"),
    (GOOD.replace('"10.00"', '"10.001"'), "accounts[0].opening_balance: more than 2 decimal places"),
    (GOOD.replace("account: A-1}", "account: A-9}"), "meters[0].account: unknown account 'A-9'"),
    (GOOD.replace("tariff: flat,", "tariff: tou,"), "accounts[0].tariff: unknown tariff 'tou'"),
    (GOOD.replace("unit_id: 1, ", ""), "meters[0].unit_id: required on a Modbus bus"),
    (GOOD.replace("host: 127.0.0.1, ", ""), "buses[0]: a modbus-tcp bus needs host and port"),
    ("- just a list\n", "the top level must be a mapping"),
    ("a: [unclosed\n", "not valid YAML"),
])
def test_errors_name_the_file_the_key_path_and_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_environment_overrides_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "mqtt: {host: broker}\n")
    settings = load_settings(path, environ={"GATEWAY_MQTT__PASSWORD": "s3cret",
                                            "GATEWAY_DATABASE__URL": "postgresql://gw@db/gw",
                                            "GATEWAY_UNRELATED": "x"})
    assert settings.mqtt is not None and settings.mqtt.password == "s3cret"
    assert settings.database.url == "postgresql://gw@db/gw"
    assert "s3cret" not in repr(settings)
