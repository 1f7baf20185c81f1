"""The alerting configuration, checked by the real tools: promtool (rules, config, rule unit tests) and amtool.

Beyond "the files parse", these tests prove the rules are meaningful: every alert has a runbook and the
annotations on-call needs, every alert is exercised by a promtool test that sees it fire and one that sees
it stay silent, and weakening any threshold makes those promtool tests fail.
"""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from runners.stack.alertmanager import render_config as alertmanager_config
from runners.stack.prometheus import amtool, promtool, render_config
from runners.stack.settings import StackSettings

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "prometheus" / "rules" / "pipeline-alerts.yml"
RULE_TESTS = sorted((MONITORING / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER = MONITORING / "alertmanager" / "alertmanager.yml"
RUNBOOKS = MONITORING / "runbooks"

EXPECTED_ALERTS = {
    "FlinkOperatorBackpressured",
    "PipelineLatencySLOBreached",
    "ConsumerLagGrowing",
    "CheckpointFailures",
    "CheckpointTooSlow",
    "DeadLetterRateHigh",
    "JobRestarting",
    "NoInput",
    "IngestionPublishFailures",
}
RUNBOOK_SECTIONS = ("## What it means", "## How to confirm", "## How to mitigate", "## How to escalate")


def _alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _ok(done) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_check_rules() -> None:
    output = _ok(promtool("check", "rules", str(RULES)))
    assert f"SUCCESS: {len(_alerts()) + 1} rules found" in output  # the alerts + one recording rule


def test_the_stack_prometheus_config_is_valid_and_uses_only_the_settings_ports(tmp_path: Path) -> None:
    stack = StackSettings(prometheus_port=29090, alertmanager_port=29094, lag_exporter_port=29308)
    config = render_config(stack, targets=tmp_path / "targets", rules=(str(RULES),))
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    assert "is valid prometheus config file syntax" in _ok(promtool("check", "config", str(path)))
    static = {
        job["job_name"]: job["static_configs"][0]["targets"]
        for job in config["scrape_configs"]
        if "static_configs" in job
    }
    assert static == {
        "prometheus": ["127.0.0.1:29090"],
        "lag-exporter": ["127.0.0.1:29308"],
        "alertmanager": ["127.0.0.1:29094"],
    }
    discovered = {job["job_name"] for job in config["scrape_configs"] if "file_sd_configs" in job}
    assert discovered == {"pipeline-workers", "ingestion"}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:29094"]


@pytest.mark.parametrize(("severity", "receiver"), [("page", "pagerduty"), ("warning", "warning-webhook")])
def test_the_stack_alertmanager_keeps_the_routing_and_delivers_each_route_to_its_webhook(
    tmp_path: Path, severity: str, receiver: str
) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(alertmanager_config("http://127.0.0.1:29095", {"group_wait": "1s"})))
    _ok(amtool("check-config", str(path)))
    routed = _ok(amtool("config", "routes", "test", f"--config.file={path}", f"severity={severity}"))
    assert routed.splitlines()[0] == receiver  # (amtool then warns that no --alertmanager.url is given)
    receivers = {r["name"]: r["webhook_configs"][0]["url"] for r in yaml.safe_load(path.read_text())["receivers"]}
    assert receivers[receiver] == f"http://127.0.0.1:29095/{receiver}"


def test_promtool_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no promtool tests in monitoring/prometheus/tests"
    output = _ok(promtool("test", "rules", *map(str, RULE_TESTS)))
    assert output.count("SUCCESS") == len(RULE_TESTS)


def test_the_expected_alerts_exist() -> None:
    names = [a["alert"] for a in _alerts()]
    assert len(names) == len(set(names))
    assert set(names) == EXPECTED_ALERTS


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_annotations_and_runbook(alert: dict) -> None:
    name = alert["alert"]
    assert alert["labels"]["severity"] in {"page", "warning"}
    annotations = alert["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(annotations)
    assert annotations["runbook_url"] == f"monitoring/runbooks/{name}.md"  # a path in this repository
    runbook = MONITORING.parent / annotations["runbook_url"]
    assert runbook.is_file(), f"missing runbook {runbook}"
    text = runbook.read_text()
    assert text.startswith(f"# {name}")
    for section in RUNBOOK_SECTIONS:
        assert section in text, f"{runbook.name} lacks '{section}'"


def test_every_alert_is_seen_firing_and_silent_by_promtool_tests() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


#: One weakened threshold per alert; each must break a promtool test, or that test proves nothing.
MUTATIONS = {
    "FlinkOperatorBackpressured": (
        "backPressuredTimeMsPerSecond) > 500",
        "> 500",
        ">= 500",
    ),
    "CheckpointFailures": ("numberOfFailedCheckpoints[10m]) > 0", "> 0", ">= 0"),
    "CheckpointTooSlow": ("(flink_jobmanager_job_lastCheckpointDuration) > 60000", "> 60000", ">= 60000"),
    "JobRestarting": ("numRestarts[10m]) > 0", "> 0", ">= 0"),
    "NoInput": ("(flink_jobmanager_job_uptime) > 0", "> 0", ">= 0"),
    "PipelineLatencySLOBreached": ("_bucket[5m]))) > 1", "> 1", "> 0.9"),
    "ConsumerLagGrowing": ("deriv(group_topic:kafka_consumergroup_lag:sum[5m]) > 0", "> 0", ">= 0"),
    "DeadLetterRateHigh": ("(rate(clickstream_records_in_total[5m])) > 0.01", "> 0.01", "> 0.001"),
    "IngestionPublishFailures": ("ingestion_publish_failures_total[5m])))\n          > 0.01", "> 0.01", "> 0.001"),
}


@pytest.mark.parametrize("alert", sorted(MUTATIONS))
def test_a_weakened_threshold_fails_the_rule_tests(alert: str, tmp_path: Path) -> None:
    context, old, new = MUTATIONS[alert]
    rules = RULES.read_text()
    assert rules.count(context) == 1, f"mutation context for {alert} not found exactly once"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(rules.replace(context, context.replace(old, new)))
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    done = promtool("test", "rules", *(str(tmp_path / "tests" / p.name) for p in RULE_TESTS))
    assert done.returncode != 0
    assert re.search(rf"alertname: {alert}\b", done.stdout + done.stderr), done.stdout + done.stderr


def test_amtool_check_config() -> None:
    output = _ok(amtool("check-config", str(ALERTMANAGER)))
    assert "2 receivers" in output


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "alertname=NoInput"], "pagerduty"),
        (["severity=warning", "alertname=CheckpointTooSlow"], "warning-webhook"),
        (["alertname=Unlabelled"], "warning-webhook"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    done = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    _ok(done)
    assert done.stdout.strip() == receiver  # stderr carries amtool's note about --alertmanager.url
