"""Session fixtures for integration tests: real local services on loopback, always stopped at the end.

Each service block below belongs to one part of the stack; add a new block rather than editing another's.
Every port is free when the session starts (``port_for``: the kernel picks it) unless an ``IT_*`` variable
names one, so two test runs on one machine (two checkouts) never collide. A component left running by an
interrupted session of this checkout is stopped first (by its pid file): it listens on that session's ports.
"""

from collections.abc import Iterator

import pytest

from runners.stack.postgres import Postgres
from runners.stack.redis import Redis
from runners.stack.settings import StackSettings
from tests.ports import port_for

# --- Enrichment stores: PostgreSQL (user profiles) + Redis (products) ------------------------------------
# Own component names (pid files, logs and data under .stack/it-*) and ports, so these fixtures never touch
# a stack started by `make up`. Both stores are seeded by start() from the default GeneratorConfig.

STORES = StackSettings(postgres_port=port_for("IT_POSTGRES_PORT"), redis_port=port_for("IT_REDIS_PORT"))


@pytest.fixture(scope="session")
def postgres_store() -> Iterator[Postgres]:
    """A running, seeded PostgreSQL; stopped (by pid) when the session ends, whatever happened."""
    component = Postgres(STORES, name="it-postgres")
    try:
        component.stop()
        component.install()
        component.start()
        yield component
    finally:
        component.stop()


@pytest.fixture(scope="session")
def redis_store() -> Iterator[Redis]:
    """A running, seeded Redis; stopped (by pid) when the session ends, whatever happened."""
    component = Redis(STORES, name="it-redis")
    try:
        component.stop()
        component.install()
        component.start()
        yield component
    finally:
        component.stop()


# --- end of enrichment stores ------------------------------------------------------------------------------


# --- Kafka broker (KRaft) + schema registry ----------------------------------------------------------------
# Own component names (it-kafka, it-schema-registry: pid files, logs and data under .stack/) and ports, so
# these fixtures never touch a stack started by `make up`. The broker's data dir is wiped at session start
# (when no it-kafka runs), so every session also exercises the first-start storage format.

import shutil  # noqa: E402

from beam_pipelines.settings import KafkaSettings, PipelineSettings  # noqa: E402
from runners.stack.kafka import Kafka  # noqa: E402
from runners.stack.registry import SchemaRegistry  # noqa: E402

KAFKA_STACK = StackSettings(
    kafka_port=port_for("IT_KAFKA_PORT"),
    kafka_controller_port=port_for("IT_KAFKA_CONTROLLER_PORT"),
    registry_port=port_for("IT_REGISTRY_PORT"),
)
#: Topics sized unlike the defaults (6 partitions, 168 h) so the tests see the settings applied.
KAFKA_PIPELINE = PipelineSettings(
    kafka=KafkaSettings(bootstrap_servers=KAFKA_STACK.kafka_bootstrap, partitions=3, retention_hours=24)
)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Kafka]:
    """A running single-node KRaft broker with the pipeline's topics; stopped (by pid) at session end."""
    component = Kafka(KAFKA_STACK, KAFKA_PIPELINE, name="it-kafka")
    try:
        component.stop()
        shutil.rmtree(component.data_dir, ignore_errors=True)
        component.install()
        component.start()
        yield component
    finally:
        component.stop()


@pytest.fixture(scope="session")
def schema_registry_service(kafka_broker: Kafka) -> Iterator[SchemaRegistry]:
    """The Confluent-compatible registry on the test broker; stopped (by pid) at session end."""
    component = SchemaRegistry(KAFKA_STACK, name="it-schema-registry")
    try:
        component.stop()
        component.install()
        component.start()
        yield component
    finally:
        component.stop()


# --- end of Kafka broker + schema registry -------------------------------------------------------------------


# --- Flink session cluster (JobManager + TaskManager) --------------------------------------------------------
# Own component name (it-flink: pid files, logs, config, checkpoints under .stack/) and ports, so this fixture
# never touches a cluster started by `make up`. The distribution (PyPI) and plugin jars are shared under
# .stack/flink/ and installed once.

from runners.stack.flink import Flink  # noqa: E402
from tests.ports import port_range_for  # noqa: E402

FLINK_STACK = StackSettings()
FLINK_PORTS = {
    "rest_port": port_for("IT_FLINK_REST_PORT"),
    "rpc_port": port_for("IT_FLINK_RPC_PORT"),
    "metrics_ports": port_range_for("IT_FLINK_METRICS_PORT_LOW", "IT_FLINK_METRICS_PORT_HIGH", 11),
}


@pytest.fixture(scope="session")
def flink_cluster() -> Iterator[Flink]:
    """A running Flink session cluster (1 JobManager, 1 TaskManager, 2 slots); stopped (by pid) at session end."""
    component = Flink(FLINK_STACK, name="it-flink", **FLINK_PORTS)
    try:
        component.stop()
        shutil.rmtree(component.checkpoint_dir, ignore_errors=True)
        shutil.rmtree(component.savepoint_dir, ignore_errors=True)
        component.install()
        component.start()
        yield component
    finally:
        component.stop()


# --- end of Flink session cluster ----------------------------------------------------------------------------


# --- Monitoring: consumer-lag exporter + Prometheus -----------------------------------------------------------
# Own component names (it-lag-exporter, it-prometheus: pid files, logs and TSDB under .stack/) and ports, so these
# fixtures never touch a stack started by `make up`. The exporter watches one group on a topic named per session
# (a broker left running by an earlier session keeps its topics); Prometheus scrapes it every second with the
# repository's alert rules loaded, and its TSDB is wiped at session start.

import contextlib  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from runners.stack.process import ManagedProcess, port_open, require_free_port, stack_path, wait_until  # noqa: E402
from runners.stack.prometheus import Prometheus  # noqa: E402

MONITORING_TOPIC = f"it-monitoring-lag-{uuid.uuid4().hex[:8]}"
MONITORING_GROUP = "it-monitoring-group"
LAG_EXPORTER_PORT = port_for("IT_LAG_EXPORTER_PORT")
PROMETHEUS_PORT = port_for("IT_PROMETHEUS_PORT")
MONITORING_RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "rules"


@pytest.fixture(scope="session")
def lag_exporter(kafka_broker: Kafka) -> Iterator[str]:
    """``python -m monitoring.lag_exporter`` for MONITORING_GROUP on MONITORING_TOPIC; yields its /metrics URL."""
    proc = ManagedProcess("it-lag-exporter")
    host = KAFKA_STACK.host
    try:
        proc.stop()
        require_free_port(host, LAG_EXPORTER_PORT, proc.name)
        proc.start(
            [
                sys.executable,
                "-m",
                "monitoring.lag_exporter",
                f"--bootstrap={kafka_broker.bootstrap}",
                f"--group={MONITORING_GROUP}",
                f"--topic={MONITORING_TOPIC}",
                f"--host={host}",
                f"--port={LAG_EXPORTER_PORT}",
            ],
            cwd=Path(__file__).resolve().parents[2],
        )
        wait_until(lambda: port_open(host, LAG_EXPORTER_PORT), 30, "lag exporter", proc.log_file)
        yield f"http://{host}:{LAG_EXPORTER_PORT}/metrics"
    finally:
        proc.stop()


@contextlib.contextmanager
def running_prometheus(
    name: str, port: int, scrape_configs: list[dict], rule_files: list[str] = ()
) -> Iterator[Prometheus]:
    """A Prometheus of our own (fresh TSDB) evaluating and scraping every second; stopped by pid on exit."""
    config = stack_path(name, "prometheus.yml")
    settings = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    document = {"global": settings, "rule_files": list(rule_files), "scrape_configs": scrape_configs}
    config.write_text(yaml.safe_dump(document))
    component = Prometheus(KAFKA_STACK, name=name, port=port, config=config)
    try:
        component.stop()
        require_free_port(KAFKA_STACK.host, port, name)
        shutil.rmtree(component.data_dir, ignore_errors=True)
        component.install()
        component.start()
        yield component
    finally:
        component.stop()


@pytest.fixture(scope="session")
def prometheus_server(lag_exporter: str) -> Iterator[Prometheus]:
    """Our Prometheus scraping the lag exporter (job ``lag-exporter``) every second, with the alert rules loaded."""
    target = lag_exporter.split("//", 1)[1].split("/", 1)[0]
    scrape = [{"job_name": "lag-exporter", "static_configs": [{"targets": [target]}]}]
    with running_prometheus("it-prometheus", PROMETHEUS_PORT, scrape, [str(MONITORING_RULES / "*.yml")]) as component:
        yield component


# Seeded lag data shared by every test that scrapes the lag exporter.
import time  # noqa: E402

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from runners.stack.kafka import ensure_topics  # noqa: E402

PRODUCED = {0: 5, 1: 7, 2: 9}  # messages per partition: N = 21
COMMITTED = {0: 2, 1: 7}  # partition 2 has no committed offset: M = 9
EXPECTED_LAG = {0: 3, 1: 0, 2: 9}  # uncommitted partition: everything retained counts; sum = N - M = 12


_COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def commit_monitoring_offsets(bootstrap: str, offsets: dict[int, int], timeout: float = 30.0) -> None:
    """Commit ``offsets`` for MONITORING_GROUP, retrying while a fresh broker still sets up its group coordinator."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = ConsumerGroupTopicPartitions(
        MONITORING_GROUP, [TopicPartition(MONITORING_TOPIC, p, o) for p, o in offsets.items()]
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = admin.alter_consumer_group_offsets([request], request_timeout=10)[MONITORING_GROUP].result(15)
            errors = [tp.error for tp in result.topic_partitions if tp.error is not None]
        except KafkaException as err:
            errors = [err.args[0]]
        if not errors:
            return
        if time.monotonic() > deadline or not all(e.code() in _COORDINATOR_NOT_READY for e in errors):
            raise AssertionError(f"committing {offsets} failed: {errors}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def lag_topic(kafka_broker: Kafka) -> str:
    """MONITORING_TOPIC with PRODUCED messages per partition and COMMITTED offsets for MONITORING_GROUP.

    Session-wide and the only writer of that topic, so every test that scrapes the lag exporter sees the same data.
    """
    ensure_topics(kafka_broker.bootstrap, [MONITORING_TOPIC], partitions=len(PRODUCED))
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "enable.idempotence": True})
    for partition, count in PRODUCED.items():
        for i in range(count):
            producer.produce(MONITORING_TOPIC, value=f"m{i}".encode(), partition=partition)
    assert producer.flush(15) == 0
    commit_monitoring_offsets(kafka_broker.bootstrap, COMMITTED)
    return MONITORING_TOPIC


# --- end of monitoring ------------------------------------------------------------------------------------------


# --- Prism job service ---------------------------------------------------------------------------
# Own component name (it-prism) and ports, so this fixture never touches a stack started by `make up`.

from runners.prism import PrismJobServer  # noqa: E402

RUNNER_STACK = StackSettings(prism_port=port_for("IT_PRISM_PORT"), prism_ui_port=port_for("IT_PRISM_UI_PORT"))


@pytest.fixture(scope="session")
def prism() -> Iterator[PrismJobServer]:
    """Prism's job service on its own port; stopped (by pid) at the end, whatever happened."""
    server = PrismJobServer(RUNNER_STACK, name="it-prism")
    try:
        server.stop()  # one an interrupted session left behind, on its old port
        require_free_port(RUNNER_STACK.host, RUNNER_STACK.prism_port, server.name)
        server.install()
        server.start()
        yield server
    finally:
        server.stop()


from beam_pipelines.settings import load_settings  # noqa: E402
from runners.stack.kafka import pipeline_topics  # noqa: E402


@pytest.fixture
def live_settings(kafka_broker, schema_registry_service, postgres_store, redis_store) -> PipelineSettings:
    """Settings pointing at the test stack, with topics and a group of this test's own."""
    run = uuid.uuid4().hex[:8]
    base = load_settings()
    topics = {name: f"it-{run}.{name}" for name in base.kafka.output_topics}
    overrides = [
        f"kafka.bootstrap_servers={KAFKA_STACK.kafka_bootstrap}",
        f"kafka.input_topic=it-{run}.raw",
        f"kafka.consumer_group=it-{run}-pipeline",
        f"registry.url={KAFKA_STACK.registry_url}",
        f"stores.postgres_dsn={postgres_store.dsn}",
        f"stores.redis_url=redis://{STORES.host}:{STORES.redis_port}/0",
        *(f"kafka.output_topics.{name}={topic}" for name, topic in topics.items()),
    ]
    settings = load_settings(overrides=tuple(overrides))
    ensure_topics(KAFKA_STACK.kafka_bootstrap, pipeline_topics(settings), partitions=3)
    return settings


# --- end of Prism ------------------------------------------------------------------------------------
