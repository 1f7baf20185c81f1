"""Consumer-group lag as Prometheus gauges: ``python -m monitoring.lag_exporter --bootstrap ... --group ...``.

Kafka keeps no lag metric of its own for a group: lag is the end offset of each partition minus the offset
the group committed there. This exporter reads both from the broker on every scrape
(``ingestion.consumer_lag.LagReader``, which the ingestion rate limiter uses too), so a scrape always
shows the broker's current view and the exporter holds no state. Exposed series (all gauges):

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
from collections.abc import Iterator, Sequence

from confluent_kafka import KafkaException
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingestion.consumer_lag import LagReader
from schemas import endpoints

LOG = logging.getLogger("monitoring.lag_exporter")
DEFAULT_PORT = endpoints.LAG_EXPORTER_PORT  # the port conventionally used by Kafka exporters


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.lag_exporter", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=endpoints.KAFKA_BOOTSTRAP, help="Kafka bootstrap servers")
    parser.add_argument("--group", action="append", required=True, help="consumer group (repeatable)")
    parser.add_argument(
        "--topic", action="append", default=[], help="topic (repeatable; default: every topic the group committed on)"
    )
    parser.add_argument("--host", default=endpoints.HOST, help="address to serve /metrics on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve /metrics on")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per Kafka request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = build_registry(LagReader({"bootstrap.servers": args.bootstrap}, args.group, args.topic, args.timeout))
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
