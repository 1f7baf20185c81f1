"""The fault suite's own stack: broker, registry, PostgreSQL, Redis and Prism that its cases stop, slow and
kill (by pid), on free ports and under their own names (fault-*), so no other test sees an outage."""

import shutil
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from beam_pipelines.settings import KafkaSettings, PipelineSettings
from runners.prism import PrismJobServer
from runners.stack.kafka import Kafka
from runners.stack.postgres import Postgres
from runners.stack.redis import Redis
from runners.stack.registry import SchemaRegistry
from runners.stack.settings import StackSettings
from tests.ports import port_for

FAULT_STACK = StackSettings(
    kafka_port=port_for("FAULT_KAFKA_PORT"),
    kafka_controller_port=port_for("FAULT_KAFKA_CONTROLLER_PORT"),
    registry_port=port_for("FAULT_REGISTRY_PORT"),
    postgres_port=port_for("FAULT_POSTGRES_PORT"),
    redis_port=port_for("FAULT_REDIS_PORT"),
    prism_port=port_for("FAULT_PRISM_PORT"),
)


class FaultStack(NamedTuple):
    kafka: Kafka
    registry: SchemaRegistry
    postgres: Postgres
    redis: Redis
    prism: PrismJobServer


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    """Every component started once for the suite; each case restores what it broke; all stopped at the end."""
    pipeline = PipelineSettings(kafka=KafkaSettings(bootstrap_servers=FAULT_STACK.kafka_bootstrap, partitions=3))
    kafka = Kafka(FAULT_STACK, pipeline, name="fault-kafka")
    stack = FaultStack(
        kafka,
        SchemaRegistry(FAULT_STACK, name="fault-schema-registry"),
        Postgres(FAULT_STACK, name="fault-postgres"),
        Redis(FAULT_STACK, name="fault-redis"),
        PrismJobServer(FAULT_STACK, name="fault-prism"),
    )
    try:
        for component in stack:
            component.stop()  # left by an interrupted session: it listens on that session's ports
        shutil.rmtree(kafka.data_dir, ignore_errors=True)
        for component in stack:
            component.install()
            component.start()
        yield stack
    finally:
        for component in reversed(stack):
            component.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    """The cases' table, in every run's summary (a passing test's own output is captured)."""
    from tests.faults.harness import RESULTS

    if RESULTS:
        terminalreporter.section("fault cases")
        terminalreporter.write_line("| case | in | routed | dead-lettered | filtered | duplicates | lost | recovery |")
        for row in RESULTS:
            terminalreporter.write_line(row)
