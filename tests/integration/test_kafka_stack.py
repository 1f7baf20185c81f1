"""The stack's Kafka broker: a real KRaft node from Maven Central jars, its topics, and its life cycle."""

import os
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from runners.stack.kafka import Kafka, ensure_topics, pipeline_topics
from runners.stack.process import StackError
from runners.stack.settings import StackSettings
from tests.integration.conftest import KAFKA_PIPELINE, KAFKA_STACK

pytestmark = pytest.mark.integration


def _consume(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"it-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            messages.append(message)
    finally:
        consumer.close()
    return messages


def test_produce_consume_round_trip(kafka_broker: Kafka) -> None:
    topic = f"it.roundtrip.{uuid.uuid4().hex[:8]}"
    assert ensure_topics(kafka_broker.bootstrap, [topic], partitions=3) == [topic]
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "acks": "all", "enable.idempotence": True})
    sent = {(f"user-{i % 4}".encode(), f"event-{i}".encode()) for i in range(40)}
    for i in range(40):
        producer.produce(topic, key=f"user-{i % 4}".encode(), value=f"event-{i}".encode())
    assert producer.flush(30) == 0

    messages = _consume(kafka_broker.bootstrap, topic, expected=40)

    assert {(m.key(), m.value()) for m in messages} == sent
    assert len(messages) == 40
    for key in {k for k, _ in sent}:  # one key, one partition, in produce order
        values = [int(m.value().split(b"-")[1]) for m in messages if m.key() == key]
        assert values == sorted(values)
        assert len({m.partition() for m in messages if m.key() == key}) == 1


def test_pipeline_topics_have_configured_partitions_and_retention(kafka_broker: Kafka) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    metadata = admin.list_topics(timeout=10)
    wanted = pipeline_topics(KAFKA_PIPELINE)
    assert KAFKA_PIPELINE.kafka.input_topic in wanted
    assert set(KAFKA_PIPELINE.kafka.output_topics.values()) <= set(wanted)
    for topic in wanted:
        assert topic in metadata.topics, f"{topic} was not created"
        assert len(metadata.topics[topic].partitions) == KAFKA_PIPELINE.kafka.partitions == 3
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in wanted]
    for future in admin.describe_configs(resources).values():
        config = future.result(timeout=10)
        assert config["retention.ms"].value == str(24 * 3_600_000)


def test_start_twice_is_harmless_and_topic_creation_idempotent(kafka_broker: Kafka) -> None:
    pid = kafka_broker.pid
    assert pid is not None

    again = Kafka(KAFKA_STACK, KAFKA_PIPELINE, name="it-kafka")  # what a second `make up` builds
    again.install()
    started = time.monotonic()
    again.start()

    assert time.monotonic() - started < 15
    assert again.pid == kafka_broker.pid == pid
    assert kafka_broker.health().ok
    assert ensure_topics(kafka_broker.bootstrap, pipeline_topics(KAFKA_PIPELINE), partitions=3) == []


def test_port_taken_is_a_clear_error(kafka_broker: Kafka) -> None:
    intruder = Kafka(KAFKA_STACK, KAFKA_PIPELINE, name="it-kafka-intruder")
    with pytest.raises(StackError, match="already in use"):
        intruder.start()
    assert intruder.pid is None
    assert kafka_broker.health().ok


def test_stop_stops_exactly_that_pid(kafka_broker: Kafka) -> None:
    other_ports = StackSettings(
        kafka_port=KAFKA_STACK.kafka_port + 10, kafka_controller_port=KAFKA_STACK.kafka_controller_port + 10
    )
    second = Kafka(other_ports, KAFKA_PIPELINE, name="it-kafka-second")
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        second.install()
        second.start()
        second_pid = second.pid
        assert second_pid is not None and second_pid != kafka_broker.pid
        assert second.health().ok

        second.stop()

        assert second.pid is None
        assert not second.health().ok
        assert _gone(second_pid)
        assert bystander.poll() is None, "stop() hit a process it did not start"
        assert kafka_broker.health().ok, "stop() of one broker stopped another"
        second.stop()  # stopping again is a no-op
    finally:
        second.stop()
        bystander.kill()
        bystander.wait()


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (ProcessLookupError, FileNotFoundError):
        return True
