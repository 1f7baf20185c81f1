"""Every Grafana dashboard expression against a real Prometheus scraping the real exporters.

One Prometheus (own name and port) scrapes the lag exporter on the test broker, the Flink cluster's JobManager and
TaskManager while the smoke job runs, and a small in-process ingestion /metrics endpoint (ingestion/metrics.py's
registry, fed by a thread). Each dashboard expression goes through the HTTP query API: all must be accepted, the
ones over metrics that exist here must return series, and the ones over the pipeline workers' metrics (listed in
EXPECTED_EMPTY: no pipeline runs here) must return nothing; those return series in
tests/integration/test_monitoring_live.py, which queries them on the live pipeline.
"""

import threading
import time
from collections.abc import Iterator

import pytest
from prometheus_client import start_http_server

from ingestion.metrics import IngestionMetrics
from runners.stack.flink import SMOKE_JOB_CLASS, Flink, build_smoke_job
from runners.stack.process import StackError
from runners.stack.prometheus import Prometheus
from tests.integration.conftest import KAFKA_STACK, running_prometheus
from tests.ports import port_for
from tests.unit.test_dashboards import dashboard_expressions

pytestmark = pytest.mark.integration

DASHBOARDS_PROMETHEUS_PORT = port_for("IT_DASHBOARDS_PROMETHEUS_PORT")
RATE_INTERVAL = "15s"  # $__rate_interval at a 1 s scrape interval: a few samples suffice
WAIT_S = 40.0

#: Panels over the pipeline workers' metrics (telemetry/metrics.py): no pipeline runs here.
PIPELINE_METRICS = ("clickstream_",)
EXPECTED_EMPTY = {
    ("overview.json", "Throughput in/C"),  # records read by the pipeline
    ("overview.json", "Throughput out/A"),  # written per output topic
    ("overview.json", "Throughput out/B"),  # routed per route
    ("overview.json", "Pipeline end-to-end latency/A"),  # p50
    ("overview.json", "Pipeline end-to-end latency/B"),  # p99
    ("overview.json", "Pipeline end-to-end latency/C"),  # p99.9
    ("overview.json", "Dead letters/A"),  # dead letters by stage
    ("overview.json", "Dead letters/B"),  # share of records in
}


@pytest.fixture(scope="module")
def ingestion_endpoint() -> Iterator[str]:
    """The ingestion service's metrics on an in-process /metrics (free port), kept moving by a feeder thread."""
    metrics = IngestionMetrics()
    metrics.rate_limit.set(500)
    metrics.queue_depth.set(3)
    stop = threading.Event()

    def feed() -> None:
        step = 0
        while not stop.wait(0.1):
            step += 1
            metrics.received.labels(source="generator").inc(10)
            metrics.published.labels(topic="clickstream.events.raw").inc(9)
            metrics.rejected.labels(reason="schema_invalid").inc(1)
            metrics.publish_failures.labels(reason="_MSG_TIMED_OUT").inc(step % 2)
            for latency in (0.002, 0.004, 0.02, 0.3):
                metrics.publish_latency.observe(latency)

    server, _ = start_http_server(0, addr=KAFKA_STACK.host, registry=metrics.registry)
    feeder = threading.Thread(target=feed, name="ingestion-metrics-feeder", daemon=True)
    feeder.start()
    try:
        yield f"{KAFKA_STACK.host}:{server.server_port}"
    finally:
        stop.set()
        feeder.join(5)
        server.shutdown()


@pytest.fixture(scope="module")
def lag_data(lag_topic: str) -> str:
    """The exporter's topic with the session's seeded lag data (written only by the ``lag_topic`` fixture)."""
    return lag_topic


@pytest.fixture(scope="module")
def dashboard_prometheus(
    flink_cluster: Flink, lag_exporter: str, lag_data: str, ingestion_endpoint: str
) -> Iterator[Prometheus]:
    """A Prometheus of its own scraping the lag exporter, Flink (JM + TM) and the ingestion endpoint every second.

    Depends on ``lag_data``: the exporter's first scrape (its first read of Kafka) comes after the group
    coordinator is ready.
    """
    flink_targets = [url.split("//", 1)[1].split("/", 1)[0] for url in flink_cluster.metrics_endpoints()]
    assert len(flink_targets) == 2, flink_targets
    lag_target = lag_exporter.split("//", 1)[1].split("/", 1)[0]
    scrape = [
        # The exporter reads Kafka on every scrape: allow it more than 1 s while Flink loads both cores.
        {
            "job_name": "lag-exporter",
            "scrape_interval": "2s",
            "scrape_timeout": "2s",
            "static_configs": [{"targets": [lag_target]}],
        },
        {"job_name": "flink", "static_configs": [{"targets": flink_targets}]},
        {"job_name": "ingestion", "static_configs": [{"targets": [ingestion_endpoint]}]},
    ]
    with running_prometheus("it-prometheus-dashboards", DASHBOARDS_PROMETHEUS_PORT, scrape) as component:
        yield component


def _evaluate(prometheus: Prometheus, expressions: list[tuple[str, str, str]]) -> tuple[dict, dict]:
    """``({(file, where): series count}, {(file, where): error})`` for one instant query per expression."""
    counts, errors = {}, {}
    for name, where, expr in expressions:
        try:
            counts[(name, where)] = len(prometheus.query(expr))
        except StackError as err:
            errors[(name, where)] = f"{expr}: {err}"
    return counts, errors


def _values(prometheus: Prometheus, expr: str, timeout: float = 10.0) -> list[float]:
    """The query's values once it returns any series (a scrape may be in flight), else an empty list."""
    deadline = time.monotonic() + timeout
    while not (result := prometheus.query(expr)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [float(series["value"][1]) for series in result]


def test_expected_empty_list_matches_the_pipeline_metrics() -> None:
    """EXPECTED_EMPTY names exactly the expressions over pipeline metrics (the list cannot drift from the JSON)."""
    pipeline = {(n, w) for n, w, expr in dashboard_expressions() if any(m in expr for m in PIPELINE_METRICS)}
    assert pipeline == EXPECTED_EMPTY


def test_every_dashboard_expression_runs_on_live_data(flink_cluster: Flink, dashboard_prometheus: Prometheus) -> None:
    expressions = dashboard_expressions(rate_interval=RATE_INTERVAL)
    keys = {(n, w) for n, w, _ in expressions}
    assert keys >= EXPECTED_EMPTY, EXPECTED_EMPTY - keys
    with_data = keys - EXPECTED_EMPTY
    # Long enough to outlive the checks (cancelled below); Flink's job metrics vanish when the job ends.
    job_id = flink_cluster.submit_jar(build_smoke_job(), SMOKE_JOB_CLASS, ["1000000", "4"])
    try:
        # An expression "has data" once any poll returns a series for it (a single slow scrape of the lag exporter
        # must not fail the test); a planned one must return nothing in every poll.
        seen: dict[tuple[str, str], int] = {}
        deadline = time.monotonic() + WAIT_S
        while True:
            counts, errors = _evaluate(dashboard_prometheus, expressions)
            assert errors == {}, errors  # every expression is accepted by Prometheus' query API
            for key, n in counts.items():
                seen[key] = max(seen.get(key, 0), n)
            empty = {key for key, n in seen.items() if n == 0}
            if empty == EXPECTED_EMPTY or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        for name, where, expr in expressions:  # the table of what returned data (pytest -rP shows it)
            print(f"{seen[(name, where)]:3d} series  {name:15s} {where:55s} {expr}")
        targets = {
            t["scrapeUrl"]: (t["health"], t["lastError"]) for t in dashboard_prometheus.api("targets")["activeTargets"]
        }
        assert sorted(with_data & empty) == [], (
            f"expressions over existing metrics returned no series; targets: {targets}"
        )
        assert sorted(EXPECTED_EMPTY - empty) == [], "a pipeline metric has data without a pipeline"

        # A few values the fixtures pin down (the expressions compute what their panels claim).
        by_where = {w: expr for _, w, expr in expressions}
        assert _values(dashboard_prometheus, by_where["Current rate limit/A"]) == [500]
        assert _values(dashboard_prometheus, by_where["Consumer lag (total)/A"])[0] > 0
        (p50,) = _values(dashboard_prometheus, by_where["Ingestion publish latency/A"])
        assert 0.0025 <= p50 <= 0.025, p50  # observed 2/4/20/300 ms: the median lies in the 2.5-5 ms..25 ms buckets
        operators = dashboard_prometheus.query(by_where["Records in per operator/A"])
        assert {s["metric"]["job_name"] for s in operators} == {"stack_smoke_job"}
        assert all(s["metric"].get("operator_name") for s in operators), operators
    finally:
        if flink_cluster.rest("GET", f"/jobs/{job_id}")["state"] not in ("FINISHED", "FAILED", "CANCELED"):
            flink_cluster.rest("PATCH", f"/jobs/{job_id}?mode=cancel")
