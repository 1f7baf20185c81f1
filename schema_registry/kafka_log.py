"""The registry's durable log: a compacted, single-partition Kafka topic (``_schemas`` by default).

One partition keeps every change in one total order; ``cleanup.policy=compact`` keeps the latest record
per key forever. Writes are produced with ``acks=all`` and idempotence and flushed before the registry
answers, so an acknowledged registration survives a crash of the registry.
"""

import logging
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from schema_registry.state import RegistryState, encode

log = logging.getLogger(__name__)


class LogError(RuntimeError):
    """The log topic cannot be created, read or written."""


class KafkaLog:
    """Append to and replay the registry's topic."""

    def __init__(self, bootstrap: str, topic: str = "_schemas", timeout_s: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer: Producer | None = None

    def ensure_topic(self) -> None:
        """Create the topic (1 partition, compacted) unless it exists; fail clearly when it is not compacted."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap}, logger=log)
        try:
            metadata = admin.list_topics(timeout=self.timeout_s)
        except KafkaException as err:
            raise LogError(f"cannot reach Kafka at {self.bootstrap}: {err}") from err
        if self.topic in metadata.topics:
            partitions = len(metadata.topics[self.topic].partitions)
            if partitions != 1:
                raise LogError(f"topic {self.topic} has {partitions} partitions; the registry needs exactly 1")
            self._wait_for_leader(admin)
            return
        topic = NewTopic(
            self.topic,
            num_partitions=1,
            replication_factor=1,
            config={"cleanup.policy": "compact", "min.insync.replicas": "1"},
        )
        future = admin.create_topics([topic], operation_timeout=self.timeout_s)[self.topic]
        try:
            future.result(timeout=self.timeout_s)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise LogError(f"cannot create topic {self.topic}: {err}") from err
        self._wait_for_leader(admin)

    def _wait_for_leader(self, admin: AdminClient) -> None:
        """A just-created topic has no leader for a moment; reading or writing it then fails."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                topic = admin.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
            except KafkaException:
                topic = None
            partition = topic.partitions.get(0) if topic is not None and topic.error is None else None
            if partition is not None and partition.error is None and partition.leader >= 0:
                return
            if time.monotonic() > deadline:
                raise LogError(f"topic {self.topic} has no partition leader after {self.timeout_s:.0f}s")
            time.sleep(0.2)

    def replay(self, state: RegistryState) -> int:
        """Apply every record from the beginning up to the current end; returns how many were read."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "schema-registry-replay",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            },
            logger=log,
        )
        try:
            low, high = self._watermarks(consumer)
            if high <= low:
                return 0
            consumer.assign([TopicPartition(self.topic, 0, low)])
            deadline = time.monotonic() + max(self.timeout_s, 60.0)
            count = 0
            position = low
            while position < high:
                if time.monotonic() > deadline:
                    raise LogError(f"replaying {self.topic} stopped at offset {position} of {high}")
                message = consumer.poll(1.0)
                if message is None:
                    continue
                if message.error():
                    if message.error().code() == KafkaError._PARTITION_EOF:
                        break
                    raise LogError(f"reading {self.topic} failed: {message.error()}")
                state.apply_raw(message.key(), message.value())
                position = message.offset() + 1
                count += 1
            return count
        except KafkaException as err:
            raise LogError(f"reading {self.topic} failed: {err}") from err
        finally:
            consumer.close()

    def _watermarks(self, consumer: Consumer) -> tuple[int, int]:
        """The partition's first and next offsets, retried while its leader is still being elected."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=self.timeout_s)
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def append(self, records: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
        """Produce ``records`` in order and wait until Kafka has them all (acks=all); raise on any failure."""
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "acks": "all",
                    "enable.idempotence": True,
                    "linger.ms": 0,
                    "message.timeout.ms": int(self.timeout_s * 1000),
                },
                logger=log,
            )
        errors: list[str] = []

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        try:
            for key, value in records:
                self._producer.produce(self.topic, key=encode(key), value=encode(value), on_delivery=delivered)
        except (KafkaException, BufferError) as err:
            raise LogError(f"writing to {self.topic} failed: {err}") from err
        remaining = self._producer.flush(self.timeout_s)
        if remaining:
            raise LogError(f"{remaining} record(s) not acknowledged by Kafka within {self.timeout_s:.0f}s")
        if errors:
            raise LogError(f"writing to {self.topic} failed: {'; '.join(errors)}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None
