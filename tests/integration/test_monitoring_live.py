"""The pipeline's own metrics in Prometheus, and its alerts firing and resolving for real, on the live stack.

The module runs the real thing: the test broker, registry, PostgreSQL and Redis; a Prism job service; the
pipeline (``python -m runners --follow``, LOOPBACK, so its SDK worker is that process) registering its
``/metrics`` by file-based discovery with a Prometheus of this module; the lag exporter for the test's group;
an Alertmanager with the repository's routing whose receivers are a webhook served here. Prometheus evaluates
the repository's alert rules with their time scaled down (``scaled_rules``: windows of 5m become 20s, every
``for`` 10s) and two thresholds moved for a 2-core machine: the latency SLO (healthy p99 on local Prism is
~2 s, see monitoring/README.md) and the lag (10000 messages would take minutes at the test's 20 events/s).
A ``Feed`` publishes valid events stamped *now*, so end-to-end latency is real.

Tests run in file order on one pipeline: metrics and dashboards while healthy; a slow store and a burst of bad
records (both pages); then the pipeline stopped (lag warning), where Beam's metrics from the job service are
compared with what Prometheus scraped.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
import yaml

from beam_pipelines.settings import PipelineSettings, load_settings
from runners.prism import PrismJobServer
from runners.stack.alertmanager import Alertmanager
from runners.stack.kafka import ensure_topics, pipeline_topics
from runners.stack.lag_exporter import LagExporter
from runners.stack.process import stack_path
from runners.stack.prometheus import Prometheus, render_config, targets_dir, worker_metrics_env
from runners.stack.settings import StackSettings
from schemas.registry import ConfluentRegistry
from tests.integration.conftest import KAFKA_STACK, STORES
from tests.integration.live_feed import Feed
from tests.ports import port_for
from tests.unit.test_dashboards import dashboard_expressions

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "rules" / "pipeline-alerts.yml"
PROMETHEUS_NAME = "it-prometheus-monitoring"
MONITORING_STACK = StackSettings(
    kafka_port=KAFKA_STACK.kafka_port,
    prometheus_port=port_for("IT_MONITORING_PROMETHEUS_PORT"),
    alertmanager_port=port_for("IT_MONITORING_ALERTMANAGER_PORT"),
    lag_exporter_port=port_for("IT_MONITORING_LAG_EXPORTER_PORT"),
)
TEST_SLO_SECONDS = 4
TEST_MAX_LAG = 100
RATE = 20.0  # events/s of the feed
BACKGROUND_BAD_SHARE = 0.0025  # a bad record every 20 s: dead-letter series exist, well under the 1% alert
ALERT_TIMEOUT_S = 90.0


def _replace_once(text: str, old: str, new: str) -> str:
    """A substitution that must apply exactly once, so a changed rule fails here instead of being tested unscaled."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {text!r}"
    return text.replace(old, new)


def scaled_rules(path: Path) -> Path:
    """The repository's rules with 5m windows as 20s, every ``for`` as 10s, the test SLO and the test lag."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace("[5m]", "[20s]")
            if "for" in rule:
                rule["for"] = "10s"
            if rule.get("alert") == "PipelineLatencySLOBreached":
                rule["expr"] = _replace_once(rule["expr"], ") > 1", f") > {TEST_SLO_SECONDS}")
            if rule.get("alert") == "ConsumerLagGrowing":
                rule["expr"] = _replace_once(rule["expr"], "> 10000", f"> {TEST_MAX_LAG}")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Webhook:
    """Alertmanager's receivers, served here: records (receiver path, alertname, status, time) per alert."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, str, float]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for alert in body["alerts"]:
                    received.append((self.path.strip("/"), alert["labels"]["alertname"], alert["status"], time.time()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer((KAFKA_STACK.host, 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, name="alert-webhook", daemon=True).start()

    def first(self, alertname: str, status: str) -> tuple[str, float] | None:
        return next(((path, at) for path, name, st, at in self.received if name == alertname and st == status), None)


class Pipeline:
    """``python -m runners --follow`` on the module's Prism, its worker registering with the module's Prometheus."""

    def __init__(self, settings_args: list[str], prism: PrismJobServer) -> None:
        self.log = stack_path(PROMETHEUS_NAME, "pipeline.log")
        env = {**os.environ, **worker_metrics_env(MONITORING_STACK, PROMETHEUS_NAME)}
        argv = [sys.executable, "-m", "runners", "--events", "0", "--follow", *settings_args]
        argv += ["--set", f"runner.prism_job_endpoint={prism.endpoint}"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> str:
        """SIGTERM (the job is cancelled), then the whole output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.log.read_text()


@pytest.fixture(scope="module")
def settings_args(kafka_broker, schema_registry_service, postgres_store, redis_store) -> list[str]:
    """``--set`` arguments: the test stack, topics and a group of this module, every lookup hitting the stores."""
    run = uuid.uuid4().hex[:8]
    base = load_settings()
    overrides = [
        f"kafka.bootstrap_servers={KAFKA_STACK.kafka_bootstrap}",
        f"kafka.input_topic=it-{run}.raw",
        f"kafka.consumer_group=it-{run}-pipeline",
        f"registry.url={KAFKA_STACK.registry_url}",
        f"stores.postgres_dsn={postgres_store.dsn}",
        f"stores.redis_url=redis://{STORES.host}:{STORES.redis_port}/0",
        "enrichment.cache_max_entries=0",  # a slow store then slows every event
        "enrichment.lookup_timeout_seconds=1.5",
        *(f"kafka.output_topics.{name}=it-{run}.{name}" for name in base.kafka.output_topics),
    ]
    settings = load_settings(overrides=tuple(overrides))
    ensure_topics(KAFKA_STACK.kafka_bootstrap, pipeline_topics(settings), partitions=3)
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.fixture(scope="module")
def pipeline_settings(settings_args: list[str]) -> PipelineSettings:
    return load_settings(overrides=tuple(settings_args[1::2]))


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture(scope="module")
def monitoring(pipeline_settings: PipelineSettings, webhook: Webhook) -> Iterator[Prometheus]:
    """Lag exporter, Alertmanager (receivers -> ``webhook``) and Prometheus with the scaled rules, fresh state."""
    lag = LagExporter(MONITORING_STACK, pipeline_settings, name="it-lag-exporter-monitoring")
    alertmanager = Alertmanager(
        MONITORING_STACK,
        name="it-alertmanager",
        webhook_port=webhook.port,
        timings={"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"},
    )
    config = stack_path(PROMETHEUS_NAME, "prometheus.yml")
    targets = targets_dir(PROMETHEUS_NAME)
    rules = scaled_rules(stack_path(PROMETHEUS_NAME, "rules.yml"))
    config.write_text(
        yaml.safe_dump(render_config(MONITORING_STACK, targets=targets, rules=(str(rules),), interval="1s"))
    )
    prometheus = Prometheus(MONITORING_STACK, name=PROMETHEUS_NAME, config=config)
    try:
        for part in (alertmanager, prometheus):
            if part.pid is None:
                shutil.rmtree(part.data_dir, ignore_errors=True)
        shutil.rmtree(targets, ignore_errors=True)
        for part in (lag, alertmanager, prometheus):
            part.install()
            part.start()
        yield prometheus
    finally:
        for part in (prometheus, alertmanager, lag):
            part.stop()


@pytest.fixture(scope="module")
def feed(schema_registry_service, pipeline_settings: PipelineSettings) -> Iterator[Feed]:
    registry = ConfluentRegistry(KAFKA_STACK.registry_url)
    running = Feed(KAFKA_STACK.kafka_bootstrap, pipeline_settings.kafka.input_topic, registry, RATE)
    running.bad_share = BACKGROUND_BAD_SHARE
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def pipeline(monitoring: Prometheus, settings_args: list[str], prism: PrismJobServer, feed: Feed) -> Iterator[Pipeline]:
    running = Pipeline(settings_args, prism)
    try:
        _wait(lambda: _value(monitoring, "sum(rate(clickstream_end_to_end_latency_seconds_count[10s]))") > 0, 120)
        yield running
    finally:
        running.stop()


def _wait(check: Callable[[], bool], timeout: float, what: str = "condition") -> float:
    """Seconds until ``check()`` held; fails after ``timeout``."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, f"{what} not reached within {timeout:.0f}s"
        time.sleep(0.5)
    return time.monotonic() - began


def _value(prometheus: Prometheus, promql: str) -> float:
    result = prometheus.query(promql)
    return float(result[0]["value"][1]) if result else float("nan")


def _state(prometheus: Prometheus, alertname: str) -> str:
    """pending, firing, or inactive (Prometheus lists only active alerts)."""
    states = {a["state"] for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == alertname}
    return "firing" if "firing" in states else states.pop() if states else "inactive"


def _lifecycle(prometheus: Prometheus, alerts: list[str], webhook: Webhook, route: str) -> dict[str, float]:
    """Waits for each of ``alerts`` to be pending, then firing, then delivered to ``route``; their timings."""
    began, seen = time.monotonic(), {}
    while len(seen) < 3 * len(alerts):
        assert time.monotonic() - began < ALERT_TIMEOUT_S, f"alerts {alerts} got only {seen}"
        for alert in alerts:
            state = _state(prometheus, alert)
            if state in ("pending", "firing"):
                seen.setdefault(f"{alert} pending", time.monotonic() - began)
            if state == "firing":
                assert f"{alert} pending" in seen, f"{alert} fired without being seen pending"
                seen.setdefault(f"{alert} firing", time.monotonic() - began)
            delivered = webhook.first(alert, "firing")
            if delivered:
                assert delivered[0] == route, f"{alert} delivered to {delivered[0]}, not {route}"
                seen.setdefault(f"{alert} delivered", time.monotonic() - began)
        time.sleep(0.5)
    return seen


def _resolution(prometheus: Prometheus, alerts: list[str], webhook: Webhook) -> dict[str, float]:
    """Waits for each of ``alerts`` to be inactive in Prometheus and its resolved notification delivered."""
    began, seen = time.monotonic(), {}
    while len(seen) < 2 * len(alerts):
        assert time.monotonic() - began < ALERT_TIMEOUT_S, f"alerts {alerts} resolved only {seen}"
        for alert in alerts:
            if _state(prometheus, alert) == "inactive":
                seen.setdefault(f"{alert} inactive", time.monotonic() - began)
            if webhook.first(alert, "resolved"):
                seen.setdefault(f"{alert} resolved delivered", time.monotonic() - began)
        time.sleep(0.5)
    return seen


def test_worker_metrics_reach_prometheus_and_every_dashboard_query_returns_series(
    pipeline: Pipeline, monitoring: Prometheus
) -> None:
    targets = monitoring.api("targets", state="active")["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "prometheus": "up",
        "lag-exporter": "up",
        "alertmanager": "up",
        "pipeline-workers": "up",
    }, [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
    (worker,) = [t["scrapeUrl"] for t in targets if t["labels"]["job"] == "pipeline-workers"]
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(worker, timeout=5) as response:
        scrape = response.read().decode()
    print(f"{len(targets)} targets up; scrape of {worker}:")
    print(
        "\n".join(line for line in scrape.splitlines() if re.match(r"clickstream_(records_in|enriched|routed)", line))
    )
    partitions = set(re.findall(r'clickstream_records_in_total\{partition="(\d)",topic="[^"]+"\}', scrape))
    assert partitions == {"0", "1", "2"}
    assert re.search(r'clickstream_enrichment_lookup_seconds_count\{store="user"\} [1-9]', scrape)
    assert re.search(r'clickstream_enrichment_lookup_seconds_count\{store="product"\} [1-9]', scrape)
    assert re.search(r'clickstream_end_to_end_latency_seconds_bucket\{le="1\.0",topic="[^"]+enriched"\}', scrape)
    assert re.search(r'clickstream_written_total\{topic="[^"]+enriched"\} [1-9]', scrape)

    # Every dashboard expression over the pipeline and the lag exporter returns series from this run; the
    # ingestion and Flink ones are checked in test_dashboards_live (no ingestion service or Flink here).
    wanted = [(w, e) for _, w, e in dashboard_expressions(rate_interval="20s") if re.search(r"clickstream_|kafka_", e)]
    assert len(wanted) >= 10
    empty: list[str] = []
    for where, expr in wanted:
        try:
            _wait(lambda expr=expr: bool(monitoring.query(expr)), 45)
        except AssertionError:
            empty.append(f"{where}: {expr}")
    assert empty == []
    p99 = _value(
        monitoring, "histogram_quantile(0.99, sum by (le) (rate(clickstream_end_to_end_latency_seconds_bucket[20s])))"
    )
    print(f"healthy p99 end-to-end latency: {p99:.2f}s")
    assert 0 < p99 < TEST_SLO_SECONDS


def test_a_slow_store_and_a_burst_of_bad_records_page_and_then_resolve(
    pipeline: Pipeline, monitoring: Prometheus, feed: Feed, webhook: Webhook, redis_store
) -> None:
    alerts = ["PipelineLatencySLOBreached", "DeadLetterRateHigh"]
    assert {alert: _state(monitoring, alert) for alert in alerts} == dict.fromkeys(alerts, "inactive")
    paused = threading.Event()
    store = redis.Redis(host=STORES.host, port=STORES.redis_port)

    def slow_store() -> None:  # every command of every client waits up to 3 s, again and again: lookups time out
        while not paused.is_set():
            store.execute_command("CLIENT", "PAUSE", 3000, "ALL")
            paused.wait(2.5)

    slowing = threading.Thread(target=slow_store, name="slow-redis", daemon=True)
    slowing.start()
    feed.bad_share = 0.3
    try:
        fired = _lifecycle(monitoring, alerts, webhook, route="pagerduty")
        print("faults on:", {k: round(v, 1) for k, v in fired.items()})
    finally:
        paused.set()
        slowing.join(10)
        feed.bad_share = BACKGROUND_BAD_SHARE
    resolved = _resolution(monitoring, alerts, webhook)
    print("faults off:", {k: round(v, 1) for k, v in resolved.items()})


def test_consumer_lag_warns_while_the_pipeline_is_stopped_and_beam_metrics_agree_with_prometheus(
    pipeline: Pipeline, monitoring: Prometheus, feed: Feed, webhook: Webhook, pipeline_settings: PipelineSettings
) -> None:
    # Quiesce first, so the last scrape holds the worker's final counts.
    feed.rate = 0
    counted = "sum(clickstream_records_in_total)"
    _wait(lambda: _value(monitoring, counted) == feed.published, 60, "all published records read")
    time.sleep(5)  # in-flight records written and scraped
    output = pipeline.stop()
    beam = {m[0]: int(m[1]) for m in re.findall(r"^  (\S+:\S+)\s+(\d+)$", output, re.M)}
    topic = pipeline_settings.kafka.input_topic
    pairs = {
        f"kafkaio:records_read[{topic}]": "sum(last_over_time(clickstream_records_in_total[1m]))",
        "clickstream:decode_ok": "sum(last_over_time(clickstream_decoded_total[1m]))",
        "clickstream:decode_dead_letter": 'sum(last_over_time(clickstream_dead_letters_total{stage="decode"}[1m]))',
        "clickstream:enrich_status_enriched": 'sum(last_over_time(clickstream_enriched_total{status="enriched"}[1m]))',
        "clickstream:route_enriched": 'sum(last_over_time(clickstream_routed_total{route="enriched"}[1m]))',
        f"kafkaio:records_written[{pipeline_settings.topic('enriched')}]": (
            f'sum(last_over_time(clickstream_written_total{{topic="{pipeline_settings.topic("enriched")}"}}[1m]))'
        ),
    }
    compared = {name: (beam.get(name), _value(monitoring, promql)) for name, promql in pairs.items()}
    print("Beam (job service) vs Prometheus (worker scrape):", compared)
    assert all(b is not None and b > 0 and b == p for b, p in compared.values()), compared

    feed.rate = RATE  # the pipeline is stopped: its group's lag grows
    fired = _lifecycle(monitoring, ["ConsumerLagGrowing"], webhook, route="warning-webhook")
    feed.rate = 0  # the lag stops growing
    resolved = _resolution(monitoring, ["ConsumerLagGrowing"], webhook)
    print("pipeline stopped:", {k: round(v, 1) for k, v in {**fired, **resolved}.items()})
