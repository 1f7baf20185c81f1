"""Monitoring against real services: the lag exporter on the test broker, and Prometheus scraping it.

The topic gets a known number of messages per partition and the group known committed offsets (one partition
left uncommitted), so every lag the exporter and Prometheus report can be checked exactly.
"""

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingestion.consumer_lag import LagReader
from monitoring.lag_exporter import LagCollector
from runners.stack.flink import SMOKE_JOB_CLASS, Flink, build_smoke_job
from runners.stack.kafka import Kafka
from runners.stack.prometheus import Prometheus
from tests.integration.conftest import (
    COMMITTED,
    EXPECTED_LAG,
    MONITORING_GROUP,
    PRODUCED,
    commit_monitoring_offsets,
    running_prometheus,
)
from tests.ports import port_for

pytestmark = pytest.mark.integration

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "rules" / "pipeline-alerts.yml"
FLINK_PROMETHEUS_PORT = port_for("IT_FLINK_PROMETHEUS_PORT")


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{metric name: {sorted labels: value}}`` from one HTTP scrape."""
    response = httpx.get(url, timeout=10, trust_env=False)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _by_partition(samples: dict[tuple[tuple[str, str], ...], float]) -> dict[int, float]:
    return {int(dict(labels)["partition"]): value for labels, value in samples.items()}


def test_exporter_reports_committed_end_and_lag_per_partition(lag_topic: str, lag_exporter: str) -> None:
    metrics = _scrape(lag_exporter)
    assert metrics["kafka_lag_exporter_up"] == {(): 1.0}
    assert _by_partition(metrics["kafka_topic_partition_end_offset"]) == PRODUCED
    assert _by_partition(metrics["kafka_topic_partition_start_offset"]) == {p: 0 for p in PRODUCED}
    assert _by_partition(metrics["kafka_consumergroup_committed_offset"]) == {**COMMITTED, 2: -1}
    lag = metrics["kafka_consumergroup_lag"]
    assert {dict(labels)["group"] for labels in lag} == {MONITORING_GROUP}
    assert {dict(labels)["topic"] for labels in lag} == {lag_topic}
    assert _by_partition(lag) == EXPECTED_LAG
    assert sum(lag.values()) == sum(PRODUCED.values()) - sum(COMMITTED.values())


def test_exporter_reads_kafka_on_every_scrape(lag_topic: str, lag_exporter: str, kafka_broker: Kafka) -> None:
    """A new commit shows up in the next scrape: the exporter caches nothing."""
    try:
        commit_monitoring_offsets(kafka_broker.bootstrap, {2: 4})
        assert _by_partition(_scrape(lag_exporter)["kafka_consumergroup_lag"]) == {**EXPECTED_LAG, 2: 5}
    finally:
        # the Prometheus test below expects partition 2 fully behind
        commit_monitoring_offsets(kafka_broker.bootstrap, {2: 0})
    assert _by_partition(_scrape(lag_exporter)["kafka_consumergroup_lag"]) == {**EXPECTED_LAG, 2: 9}


def test_exporter_reports_down_when_kafka_is_unreachable() -> None:
    reader = LagReader({"bootstrap.servers": "127.0.0.1:1"}, ["nobody"], ["nothing"], timeout_s=1.0)
    families = {family.name: family for family in LagCollector(reader).collect()}
    assert families["kafka_lag_exporter_up"].samples[0].value == 0
    assert families["kafka_consumergroup_lag"].samples == []


def _eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_prometheus_scrapes_the_exporter_and_loads_the_alert_rules(
    lag_topic: str, prometheus_server: Prometheus
) -> None:
    up = _eventually(lambda: prometheus_server.query('up{job="lag-exporter"} == 1'))
    assert len(up) == 1, prometheus_server.api("targets")

    query = f'kafka_consumergroup_lag{{job="lag-exporter", group="{MONITORING_GROUP}", topic="{lag_topic}"}}'

    def lag_by_partition() -> dict[int, float]:
        return {int(s["metric"]["partition"]): float(s["value"][1]) for s in prometheus_server.query(query)}

    # Wait for the expected values, not just for series: an earlier test moves the commits and scrapes trail.
    assert _eventually(lambda: lag_by_partition() == EXPECTED_LAG), lag_by_partition()

    # The recording rule behind ConsumerLagGrowing, evaluated by this Prometheus on the exporter's real output.
    total = f'group_topic:kafka_consumergroup_lag:sum{{group="{MONITORING_GROUP}", topic="{lag_topic}"}}'
    expected_total = [float(sum(EXPECTED_LAG.values()))]  # the rule trails the scrapes by an evaluation
    recorded = _eventually(
        lambda: [s for s in prometheus_server.query(total) if [float(s["value"][1])] == expected_total]
    )
    assert [float(s["value"][1]) for s in recorded] == expected_total

    rules = prometheus_server.api("rules", type="alert")["groups"]
    alerts = {rule["name"]: rule for group in rules for rule in group["rules"]}
    assert len(alerts) == 9
    assert all(rule["health"] == "ok" for rule in alerts.values()), alerts
    # 12 messages of lag is far under the 10000 threshold: nothing may fire or be pending.
    assert alerts["ConsumerLagGrowing"]["state"] == "inactive"

    health = prometheus_server.health()
    assert health.ok and "1/1 targets up" in health.detail, health.detail


# --- The alert rules' Flink metrics, live from the local Flink cluster ----------------------------------------

FLINK_JOB_NAME = "stack_smoke_job"  # the reporter rewrites "stack-smoke-job": label values keep [A-Za-z0-9:_] only


@pytest.fixture(scope="module")
def flink_prometheus(flink_cluster: Flink) -> Iterator[Prometheus]:
    """A second Prometheus scraping the Flink cluster's reporter endpoints every second, with the alert rules."""
    targets = [url.split("//", 1)[1].split("/", 1)[0] for url in flink_cluster.metrics_endpoints()]
    assert len(targets) == 2, targets  # JobManager + TaskManager
    scrape = [{"job_name": "flink", "static_configs": [{"targets": targets}]}]
    with running_prometheus("it-prometheus-flink", FLINK_PROMETHEUS_PORT, scrape, [str(RULES)]) as component:
        yield component


def _alert_rules(prometheus: Prometheus, inactive: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The loaded alerting rules by name (all healthy), once every rule in ``inactive`` is inactive; else empty."""
    groups = prometheus.api("rules", type="alert")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert all(rule["health"] == "ok" for rule in rules.values()), rules
    return rules if all(rules[name]["state"] == "inactive" for name in inactive) else {}


def test_flink_metrics_of_the_alert_rules_exist_on_a_running_job(
    flink_cluster: Flink, flink_prometheus: Prometheus
) -> None:
    """Every flink_* name and grouping label in the rules is checked against a live job, not only the docs."""
    used = sorted(set(re.findall(r"\bflink_[A-Za-z_]+", RULES.read_text())))
    assert len(used) == 6, used
    job_id = flink_cluster.submit_jar(build_smoke_job(), SMOKE_JOB_CLASS, ["6000", "4"])
    try:
        job = f'job_name="{FLINK_JOB_NAME}"'
        for name in used:
            found = _eventually(lambda n=name: flink_prometheus.query(f"{n}{{{job}}}"), timeout=30)
            assert found, f"{name} not scraped from Flink while the job runs"
        # The grouping labels the alerts keep (and show in their annotations) are present and non-empty.
        tasks = flink_prometheus.query(
            f"max by (job_name, task_name) (flink_taskmanager_job_task_backPressuredTimeMsPerSecond{{{job}}})"
        )
        assert tasks and all(s["metric"].get("task_name") for s in tasks), tasks
        # NoInput's two sides on a job that is running and reading: records flow, uptime > 0, so no alert.
        flowing = _eventually(
            lambda: flink_prometheus.query(
                f"sum by (job_name) (flink_taskmanager_job_task_operator_numRecordsInPerSecond{{{job}}}) > 0 "
                f"and on (job_name) max by (job_name) (flink_jobmanager_job_uptime{{{job}}}) > 0"
            ),
            timeout=30,
        )
        assert [s["metric"]["job_name"] for s in flowing] == [FLINK_JOB_NAME]
        # A job's meters start at 0, so NoInput may be pending for its first seconds (harmless: `for: 10m`);
        # once records flow, it and the other job alerts must be inactive on this healthy job.
        quiet = ("NoInput", "FlinkOperatorBackpressured", "JobRestarting", "CheckpointTooSlow")
        alerts = _eventually(lambda: _alert_rules(flink_prometheus, quiet), timeout=15)
        assert alerts, {n: r["state"] for n, r in _alert_rules(flink_prometheus, ()).items()}
    finally:
        if flink_cluster.rest("GET", f"/jobs/{job_id}")["state"] not in ("FINISHED", "FAILED", "CANCELED"):
            flink_cluster.rest("PATCH", f"/jobs/{job_id}?mode=cancel")
