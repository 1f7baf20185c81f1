"""Consumer-group lag as Prometheus gauges: ``python -m runners.lag_exporter --bootstrap ... --group ...``.

Kafka keeps no lag metric of its own for a group: lag is the end offset of each partition minus the offset
the group committed there. This exporter reads both from the broker on every scrape (AdminClient:
``list_consumer_group_offsets`` and ``list_offsets``), so a scrape always shows the broker's current view and
the exporter holds no state. Exposed series (all gauges):

- ``kafka_consumergroup_committed_offset{group,topic,partition}``: -1 where the group has not committed;
- ``kafka_topic_partition_end_offset{topic,partition}`` and ``kafka_topic_partition_start_offset``;
- ``kafka_consumergroup_lag{group,topic,partition}``: end - committed, or end - start (everything still
  retained) where the group has not committed yet, never below 0;
- ``kafka_lag_exporter_up`` (1 if the last read from Kafka worked) and ``kafka_lag_exporter_read_seconds``.

The alert ``ConsumerLagGrowing`` (monitoring/prometheus/rules/pipeline-alerts.yml) is built on these names.
"""

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LOG = logging.getLogger("runners.lag_exporter")
DEFAULT_PORT = 9308  # the port conventionally used by Kafka exporters; monitoring/prometheus/prometheus.yml scrapes it


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
        self, bootstrap: str, groups: Sequence[str], topics: Sequence[str] = (), timeout_s: float = 5.0
    ) -> None:
        if not groups:
            raise ValueError("at least one consumer group is needed")
        self.groups = list(dict.fromkeys(groups))
        self.topics = list(dict.fromkeys(topics))
        self.timeout_s = timeout_s
        self._admin = AdminClient(
            {"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000)},
            logger=logging.getLogger("runners.lag_exporter.librdkafka"),
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


class LagCollector(Collector):
    """Reads Kafka on every scrape; a failed read is reported as ``kafka_lag_exporter_up 0``, not an HTTP error."""

    def __init__(self, reader: LagReader) -> None:
        self._reader = reader
        self._lock = threading.Lock()  # concurrent scrapes share one AdminClient; one read at a time

    def collect(self) -> Iterator[Metric]:
        began = time.monotonic()
        with self._lock:
            try:
                rows = self._reader.read()
                ok = True
            except (KafkaException, TimeoutError) as err:
                LOG.warning("reading offsets failed: %s", err)
                rows, ok = [], False
        labels = ["group", "topic", "partition"]
        committed = GaugeMetricFamily(
            "kafka_consumergroup_committed_offset", "Offset the group committed (-1: none yet).", labels=labels
        )
        lag = GaugeMetricFamily(
            "kafka_consumergroup_lag", "End offset minus committed offset (start offset if none).", labels=labels
        )
        end = GaugeMetricFamily(
            "kafka_topic_partition_end_offset", "Next offset to write.", labels=["topic", "partition"]
        )
        start = GaugeMetricFamily(
            "kafka_topic_partition_start_offset", "Oldest offset still retained.", labels=["topic", "partition"]
        )
        seen: set[tuple[str, int]] = set()
        for row in rows:
            key = [row.group, row.topic, str(row.partition)]
            committed.add_metric(key, row.committed)
            lag.add_metric(key, row.lag)
            if (row.topic, row.partition) not in seen:
                seen.add((row.topic, row.partition))
                end.add_metric([row.topic, str(row.partition)], row.end)
                start.add_metric([row.topic, str(row.partition)], row.start)
        yield from (committed, lag, end, start)
        yield GaugeMetricFamily("kafka_lag_exporter_up", "1 if the last read of offsets from Kafka worked.", int(ok))
        yield GaugeMetricFamily(
            "kafka_lag_exporter_read_seconds", "Time the last read of offsets took.", time.monotonic() - began
        )


def build_registry(reader: LagReader) -> CollectorRegistry:
    """A registry holding only the lag collector (no process/platform metrics of this exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LagCollector(reader))
    return registry


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.lag_exporter", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--group", action="append", required=True, help="consumer group (repeatable)")
    parser.add_argument(
        "--topic", action="append", default=[], help="topic (repeatable; default: every topic the group committed on)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve /metrics on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve /metrics on")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per Kafka request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = build_registry(LagReader(args.bootstrap, args.group, args.topic, args.timeout))
    server, _ = start_http_server(args.port, addr=args.host, registry=registry)
    LOG.info("serving lag of %s on http://%s:%d/metrics", ", ".join(args.group), args.host, args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
