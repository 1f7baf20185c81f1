import re

import pytest

from beam_pipelines.settings import SASL_PASSWORD_ENV, SettingsError, load_settings
from runners.__main__ import main as run


def test_bundled_config_loads_with_every_output_mapped_to_a_topic():
    settings = load_settings()
    assert [r.name for r in settings.routes] == ["orders", "high_value_alerts", "enriched"]
    assert settings.output_names() == [
        "orders",
        "high_value_alerts",
        "enriched",
        "unrouted",
        "window_metrics",
        "sessions",
        "filtered",
        "dead_letters",
    ]
    assert settings.topic("dead_letters") == "clickstream.dead-letters"
    assert settings.windows.size_seconds == 60 and settings.windows.allowed_lateness_seconds == 300
    assert settings.sessions.gap_seconds == 1800


def test_overrides_are_typed_and_nested():
    settings = load_settings(overrides=("windows.size_seconds=120", "kafka.bootstrap_servers=broker:9093"))
    assert settings.windows.size_seconds == 120
    assert settings.kafka.client_config() == {"bootstrap.servers": "broker:9093"}


def test_secrets_do_not_leak_into_reprs():
    settings = load_settings(overrides=("kafka.sasl_username=svc", "kafka.sasl_password=hunter2"))
    assert "hunter2" not in repr(settings)
    assert settings.kafka.client_config()["sasl.password"] == "hunter2"
    # What travels to workers names the environment variable, never the value.
    assert "hunter2" not in repr(settings.kafka.public_client_config())
    assert settings.kafka.secret_env() == {"sasl.password": SASL_PASSWORD_ENV}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("windows.size_seconds=0", "windows.size_seconds"),
        ("windows.size_sconds=60", "windows.size_sconds"),
        ("enrichment.lookup_timeout_seconds=soon", "enrichment.lookup_timeout_seconds"),
        ("default_route=orders", "default_route"),
        ("routes=[{name: extra}]", "no topic for output(s) ['extra']"),
        ("no_equals_sign", "path=value"),
    ],
)
def test_bad_settings_name_the_field(override, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(overrides=(override,))


def test_unreadable_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad)


def test_cli_rejects_bad_settings_with_exit_code_2(capsys):
    assert run(["--set", "windows.size_seconds=-5"]) == 2
    assert "windows.size_seconds" in capsys.readouterr().err


def test_cli_help_lists_every_settings_path(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for path in ("kafka.bootstrap_servers", "enrichment.lookup_timeout_seconds", "sessions.gap_seconds", "routes"):
        assert path in out
    assert "runner.flink_master" in out and "[default: ()]" not in out


def test_cli_names_an_unknown_runner_and_retires_direct(capsys):
    assert run(["--runner", "spark"]) == 2
    assert "unknown RUNNER='spark'" in capsys.readouterr().err
    assert run(["--runner", "direct"]) == 2
    assert "use RUNNER=prism" in capsys.readouterr().err
