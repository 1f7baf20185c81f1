"""Publish throughput for producer batching settings, side by side (like the design article's table).

Runs against a live broker and registry (``make up``; or KAFKA_BOOTSTRAP / SCHEMA_REGISTRY_URL), one
fresh topic per setting, the same pre-generated events each time, through the product's Publisher
(Confluent Avro, acks=all, idempotence). ``python -m benchmarks.publish [--events N]``.
"""

import argparse
import os
import sys
import time
import uuid

from ingestion.generator import GeneratorConfig, events
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import ProducerSettings, Publisher
from runners.stack.kafka import delete_topics, ensure_topics
from runners.stack.process import port_open
from schemas import endpoints
from schemas.registry import ConfluentRegistry

SETTINGS = [
    ("librdkafka defaults", 5, 1_000_000, "none"),
    ("article 'default' (16 KiB, 0 ms)", 0, 16_384, "none"),
    ("article code (32 KiB, 5 ms)", 5, 32_768, "none"),
    ("article optimised (64 KiB, 10 ms)", 10, 65_536, "none"),
    ("optimised + lz4 (project default)", 10, 65_536, "lz4"),
    ("256 KiB, 50 ms, lz4", 50, 262_144, "lz4"),
]


def _measure(args: argparse.Namespace, sample: list, registry: ConfluentRegistry, run: str) -> list[tuple]:
    """One row per setting, each on a fresh topic named ``run`` + a number."""
    rows = []
    for i, (label, linger, batch, compression) in enumerate(SETTINGS):
        topic = f"{run}{i}"
        ensure_topics(args.bootstrap, [topic], partitions=6)
        metrics = IngestionMetrics()
        settings = ProducerSettings(linger_ms=linger, batch_size=batch, compression=compression)
        publisher = Publisher({"bootstrap.servers": args.bootstrap}, topic, registry, settings, metrics)
        started = time.perf_counter()
        for event in sample:
            publisher.publish(event)
        in_doubt = publisher.close(120)
        seconds = time.perf_counter() - started
        latency = metrics.publish_latency.collect()[0].samples
        total = {s.name: s.value for s in latency if not s.labels.get("le")}
        mean_ms = (
            1000
            * total["ingestion_publish_latency_seconds_sum"]
            / max(1, total["ingestion_publish_latency_seconds_count"])
        )
        rows.append((label, linger, batch, compression, publisher.acked, in_doubt + publisher.failed, seconds, mean_ms))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", endpoints.KAFKA_BOOTSTRAP))
    parser.add_argument("--registry-url", default=os.environ.get("SCHEMA_REGISTRY_URL", endpoints.REGISTRY_URL))
    args = parser.parse_args(argv)
    host, port = args.bootstrap.split(",")[0].rsplit(":", 1)
    if not port_open(host, int(port)):
        print(f"error: no broker at {args.bootstrap}; start the local stack with `make up`", file=sys.stderr)
        return 2
    now = int(time.time() * 1000)
    sample = [e.event for e in events(GeneratorConfig(events=args.events, invalid_share=0, malformed_share=0), now)]
    registry = ConfluentRegistry(args.registry_url)
    run = f"bench-publish-{uuid.uuid4().hex[:8]}."
    try:
        rows = _measure(args, sample, registry, run)
    finally:
        delete_topics(args.bootstrap, run)
    base = rows[1][4] / rows[1][6]
    print(f"{args.events:,} events per setting, acks=all, idempotence on, 6 partitions, broker {args.bootstrap}")
    columns = (("linger", 7), ("batch", 9), ("codec", 6), ("acked", 9), ("lost", 6), ("events/s", 11))
    print(f"{'setting':<36}" + "".join(f"{name:>{width}}" for name, width in columns) + "  vs 16KiB/0ms  mean ack ms")
    for label, linger, batch, codec, acked, lost, seconds, mean_ms in rows:
        rate = acked / seconds
        cells = f"{label:<36}{linger:>7}{batch:>9}{codec:>6}{acked:>9,}{lost:>6}{rate:>11,.0f}"
        print(f"{cells}{rate / base:>13.2f}x{mean_ms:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
