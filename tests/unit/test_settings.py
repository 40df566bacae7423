from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
tariffs: {flat: {kind: flat, price: "0.5600"}}
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
    (GOOD.replace('price: "0.5600"', 'price: 0.56'), "tariffs.flat.price"),
    (GOOD.replace("kind: flat,", "kind: stepped,"), "tariffs.flat"),
    (GOOD + "policy: {notice_period: soon}\n", "policy.notice_period"),
    (GOOD + "policy: {colour: red}\n", "policy: unknown key(s): colour"),
    (GOOD.replace("tariff: flat,", "tariff: flat, credit_class: Z,"), "accounts[0].credit_class: unknown credit class 'Z'"),
    (GOOD + "holidays_file: nowhere.txt\n", "holidays_file: cannot read"),
    ("a: [unclosed\n", "not valid YAML"),
    # ids travel in URL paths and API bodies
    (GOOD.replace("{id: A-1,", '{id: "A/1",').replace("account: A-1}", 'account: "A/1"}'), "accounts[0].id"),
    (GOOD.replace("{id: M-1,", '{id: " M-1",'), "meters[0].id"),
    # ids are MQTT topic levels too: no wildcards
    (GOOD.replace("{id: M-1,", '{id: "M+1",'), "meters[0].id"),
    (GOOD.replace("{id: A-1,", '{id: "A#1",').replace("account: A-1}", 'account: "A#1"}'), "accounts[0].id"),
    (GOOD.replace("account: A-1}", "account: A-1, groups: [\"a/b\"]}"), "meters[0].groups[0]"),
    (GOOD + "api: {tls_certfile: cert.pem}\n", "api: tls_certfile and tls_keyfile go together"),
    (GOOD + "api: {max_body_bytes: 10}\n", "api.max_body_bytes"),
    # notices: contacts on known channels, signed webhooks, known placeholders
    (GOOD.replace('opening_balance: "10.00"}', 'contacts: [{name: Li, channel: sms, to: "1"}]}'),
     "accounts[0].contacts[0].channel: unknown channel 'sms' (no notices section)"),
    (GOOD + "notices: {channels: {sms: {kind: webhook, url: 'http://127.0.0.1:1/x'}}}\n",
     "a webhook channel needs a secret"),
    (GOOD + "notices: {channels: {sms: {kind: webhook, url: 'ftp://x', secret: 0123456789abcdefg}}}\n",
     "a webhook channel's url must start with http:// or https://"),
    (GOOD + "notices: {channels: {sms: {kind: apprise, url: 'json://x'}}, templates: {exhausted: {en: 'hi {who}'}}}\n",
     "notices.templates: exhausted.en: unknown placeholder {who}"),
    (GOOD + "notices: {channels: {sms: {kind: apprise, url: 'json://x'}}, templates: {gone: {en: 'x'}}}\n",
     "notices.templates.gone"),
    (GOOD + "notices: {channels: {sms: {kind: apprise, url: 'json://x'}}, staff: [{name: s, channel: sms}]}\n",
     "staff[0].role: the site's staff contacts have role staff"),
    (GOOD + "notices: {channels: {sms: {kind: apprise, url: 'json://x'}}, staff: [{name: s, role: staff, "
            "channel: mail}]}\n", "staff[0].channel: unknown channel 'mail'"),
    # one physical meter for two accounts
    (GOOD.replace("accounts: [{id: A-1, tariff: flat, opening_balance: \"10.00\"}]",
                  "accounts: [{id: A-1, tariff: flat}, {id: A-2, tariff: flat}]").replace(
        "meters: [{id: M-1, bus: bus1, unit_id: 1, account: A-1}]",
        "meters: [{id: M-1, bus: bus1, unit_id: 1, account: A-1}, {id: M-2, bus: bus1, unit_id: 1, account: A-2}]"),
     "meters[1].unit_id: 1 is already meters[0]'s on bus 'bus1'"),
    (GOOD.replace("buses: [{id: bus1, protocol: modbus-tcp, host: 127.0.0.1, port: 5020}]",
                  "buses: [{id: bus1, protocol: dlt645-tcp, host: 127.0.0.1, port: 5020}]").replace(
        "meters: [{id: M-1, bus: bus1, unit_id: 1, account: A-1}]",
        "meters: [{id: M-1, bus: bus1, address: '1', account: A-1}, {id: M-2, bus: bus1, address: '000000000001', "
        "account: A-1}]"), "meters[1].address: 000000000001 is already meters[0]'s on bus 'bus1'"),
    (GOOD + "relay_modules: [{id: R-1, bus: bus1, unit_id: 9, meter: M-9}]\n",
     "relay_modules[0].meter: unknown meter 'M-9'"),
    (GOOD + "relay_modules: [{id: R-1, bus: bus1, unit_id: 1, meter: M-1}]\n",
     "relay_modules[0].unit_id: 1 is already meters[0]'s on bus 'bus1'"),
    # readings kept in memory for longer than a reading stays fresh
    (GOOD + "policy: {stale_after: 60s}\n", "engine.reading_history_s: 60 s is not shorter than policy.stale_after"),
    (GOOD + "policy: {stale_after: 5m}\nengine: {reading_history_s: 300}\n",
     "engine.reading_history_s: 300 s is not shorter than policy.stale_after (300 s)"),
])
def test_errors_name_the_file_the_key_path_and_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_reading_history_shorter_than_stale_after_or_no_staleness_is_accepted(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, GOOD + "policy: {stale_after: 61s}\n"), environ={}).engine.reading_history_s == 60
    text = GOOD + "policy: {stale_after: null}\nengine: {reading_history_s: 3600}\n"
    assert load_settings(write(tmp_path, text), environ={}).engine.reading_history_s == 3600


def test_environment_overrides_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "mqtt: {host: broker}\n")
    settings = load_settings(path, environ={"GATEWAY_MQTT__PASSWORD": "s3cret",
                                            "GATEWAY_DATABASE__URL": "postgresql://gw@db/gw",
                                            "GATEWAY_UNRELATED": "x"})
    assert settings.mqtt is not None and settings.mqtt.password == "s3cret"
    assert settings.database.url == "postgresql://gw@db/gw"
    assert "s3cret" not in repr(settings)


def test_holiday_file_is_read_relative_to_the_settings(tmp_path: Path) -> None:
    (tmp_path / "holidays.txt").write_text("2026-10-01..2026-10-07 National Day\n")
    settings = load_settings(write(tmp_path, GOOD + "holidays_file: holidays.txt\n"), environ={})
    import datetime as dt

    policy = settings.site_policy(base_dir=tmp_path)
    assert policy.holidays.is_holiday(dt.date(2026, 10, 3))
    (tmp_path / "holidays.txt").write_text("2026-13-01 nonsense\n")
    with pytest.raises(ConfigError, match="holidays.txt:1"):
        load_settings(tmp_path / "gateway.yaml", environ={})


def test_a_numeric_looking_secret_from_the_environment_stays_a_string(tmp_path: Path) -> None:
    text = GOOD.replace("port: 5020}]", "port: 5020}, {id: rs485, protocol: dlt645-tcp, host: 127.0.0.1, port: 8021}]")
    settings = load_settings(write(tmp_path, text), environ={"GATEWAY_BUSES__1__PASSWORD": "000123",
                                                             "GATEWAY_API__PORT": "9090"})
    assert settings.buses[1].password == "000123"
    assert settings.api.port == 9090
    assert "000123" not in repr(settings)


def test_check_config_refuses_a_prepaid_account_that_no_relay_can_switch(tmp_path: Path) -> None:
    """A meter model without a relay and no relay module: the account could never be disconnected."""
    import subprocess
    import sys

    text = GOOD.replace("account: A-1}", "account: A-1, model: eastron-sdm120}")
    path = write(tmp_path, text)
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(path)], capture_output=True,
                         text=True, cwd=ROOT, check=False)
    assert run.returncode == 2
    assert f"{path}: accounts[0]: no meter of the prepaid account 'A-1' has a relay" in run.stderr
    module = text + "relay_modules: [{id: R-1, bus: bus1, unit_id: 9, meter: M-1}]\n"
    ok = subprocess.run([sys.executable, "-m", "gateway.cli", "check-config", str(write(tmp_path, module))],
                        capture_output=True, text=True, cwd=ROOT, check=False)
    assert ok.returncode == 0, ok.stderr
