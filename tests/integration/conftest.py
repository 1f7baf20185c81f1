"""Session fixtures for integration tests: real local services on loopback, always stopped at the end.

Each service block below belongs to one part of the stack; add a new block rather than editing another's.
"""

import os
from collections.abc import Iterator

import pytest

from runners.stack.postgres import Postgres
from runners.stack.redis import Redis
from runners.stack.settings import StackSettings

# --- Enrichment stores: PostgreSQL (user profiles) + Redis (products) ------------------------------------
# Own component names (pid files, logs and data under .stack/it-*) and ports, so these fixtures never touch
# a stack started by `make up`. Both stores are seeded by start() from the default GeneratorConfig.

STORES = StackSettings(
    postgres_port=int(os.environ.get("IT_POSTGRES_PORT", "15432")),
    redis_port=int(os.environ.get("IT_REDIS_PORT", "16379")),
)


@pytest.fixture(scope="session")
def postgres_store() -> Iterator[Postgres]:
    """A running, seeded PostgreSQL; stopped (by pid) when the session ends, whatever happened."""
    component = Postgres(STORES, name="it-postgres")
    try:
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
    kafka_port=int(os.environ.get("IT_KAFKA_PORT", "19092")),
    kafka_controller_port=int(os.environ.get("IT_KAFKA_CONTROLLER_PORT", "19093")),
    registry_port=int(os.environ.get("IT_REGISTRY_PORT", "18085")),
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
        if component.pid is None:
            shutil.rmtree(component.data_dir, ignore_errors=True)
        component.install()
        component.start()
        yield component
    finally:
        component.stop()


@pytest.fixture(scope="session")
def schema_registry_service(kafka_broker: Kafka) -> Iterator[SchemaRegistry]:
    """The Confluent-compatible registry on the test broker; stopped (by pid) at session end."""
    component = SchemaRegistry(KAFKA_STACK, KAFKA_PIPELINE, name="it-schema-registry")
    try:
        component.install()
        component.start()
        yield component
    finally:
        component.stop()


# --- end of Kafka broker + schema registry -------------------------------------------------------------------
