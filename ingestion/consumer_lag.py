"""Consumer-group lag read from Kafka: committed offsets against each partition's start and end offsets.

One reader for both users of lag: the ingestion rate limiter (``ingestion.signals.ConsumerLag``) and the
Prometheus exporter (``monitoring.lag_exporter``), so they can never disagree on what lag means.
"""

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionLag:
    """One partition as one consumer group sees it."""

    group: str
    topic: str
    partition: int
    committed: int  # -1: the group has no committed offset here
    start: int
    end: int

    @property
    def lag(self) -> int:
        """Messages the group still has to read; with no commit, everything still retained counts."""
        position = self.committed if self.committed >= 0 else self.start
        return max(self.end - position, 0)


class LagReader:
    """Reads committed and end offsets for consumer groups from Kafka (one AdminClient, reused)."""

    def __init__(
        self,
        client_config: dict[str, str],
        groups: Sequence[str],
        topics: Sequence[str] = (),
        timeout_s: float = 5.0,
    ) -> None:
        if not groups:
            raise ValueError("at least one consumer group is needed")
        self.groups = list(dict.fromkeys(groups))
        self.topics = list(dict.fromkeys(topics))
        self.timeout_s = timeout_s
        self._admin = AdminClient(
            {**client_config, "socket.timeout.ms": int(timeout_s * 1000)},
            logger=logging.getLogger(f"{__name__}.librdkafka"),
        )
        self._coordinated: set[str] = set()

    def _await_coordinator(self, group: str) -> None:
        """Wait until the group's coordinator answers before the first offset read for it.

        librdkafka can crash (segfault) in ListConsumerGroupOffsets when the reply is NOT_COORDINATOR, which a
        freshly started broker sends while it loads __consumer_offsets (librdkafka issue #5040). Describing
        the group first is harmless and returns an ordinary error until the coordinator is ready.
        """
        if group in self._coordinated:
            return
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self._admin.describe_consumer_groups([group], request_timeout=self.timeout_s)[group].result(
                    timeout=self.timeout_s
                )
                self._coordinated.add(group)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def read(self) -> list[PartitionLag]:
        """Every partition of the configured topics (or, without topics, every partition the group committed on)."""
        explicit = self._partitions(self.topics) if self.topics else []
        if self.topics and not explicit:
            return []
        committed: dict[tuple[str, str, int], int] = {}
        for group in self.groups:
            self._await_coordinator(group)
            request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in explicit] or None)
            future = self._admin.list_consumer_group_offsets([request], request_timeout=self.timeout_s)[group]
            for tp in future.result(timeout=self.timeout_s).topic_partitions or []:
                if tp.error is not None:
                    raise KafkaException(tp.error)
                committed[(group, tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else -1
        keys = sorted(set(committed) | {(g, t, p) for g in self.groups for t, p in explicit})
        partitions = sorted({(t, p) for _, t, p in keys})
        start = self._offsets(partitions, OffsetSpec.earliest())
        end = self._offsets(partitions, OffsetSpec.latest())
        return [
            PartitionLag(g, t, p, committed.get((g, t, p), -1), start[(t, p)], end[(t, p)])
            for g, t, p in keys
            if (t, p) in end
        ]

    def _partitions(self, topics: Iterable[str]) -> list[tuple[str, int]]:
        metadata = self._admin.list_topics(timeout=self.timeout_s).topics
        found = []
        for topic in topics:
            if topic not in metadata or metadata[topic].error is not None:
                LOG.warning("topic %s does not exist (yet); it is skipped", topic)
                continue
            found.extend((topic, p) for p in sorted(metadata[topic].partitions))
        return found

    def _offsets(self, partitions: Sequence[tuple[str, int]], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self._admin.list_offsets(
            {TopicPartition(t, p): spec for t, p in partitions}, request_timeout=self.timeout_s
        )
        return {(tp.topic, tp.partition): f.result(timeout=self.timeout_s).offset for tp, f in futures.items()}
