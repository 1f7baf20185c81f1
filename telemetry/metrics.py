"""Every Prometheus series the pipeline's workers export, in one registry of their own.

Beam counters (``transforms.stage_metrics``) only reach Prometheus through a runner's metric system, and
Prism has none; so the DoFns also count here, with prometheus-client, and each worker process serves these
on ``/metrics`` (``telemetry.endpoint``). The names below are what the alert rules and dashboards query.

A restarted worker starts every counter at 0 again: ``rate()``/``increase()`` treat that as a counter reset,
so rates stay right; sums of raw counter values across a restart do not.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

#: End-to-end latency buckets (seconds): fine around the 1 s SLO so p50/p99/p99.9 interpolate within
#: a narrow bucket there, coarse beyond it for replays of old records (minutes to an hour).
LATENCY_BUCKETS = (
    0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip
#: One store call: a healthy lookup takes milliseconds, the default timeout is 0.5 s.
LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

RECORDS_IN = Counter("clickstream_records_in", "Records read from Kafka.", ["topic", "partition"], registry=REGISTRY)
DECODED = Counter("clickstream_decoded", "Input records decoded into events.", registry=REGISTRY)
DEAD_LETTERS = Counter(
    "clickstream_dead_letters", "Records sent to the dead-letter topic.", ["stage", "code"], registry=REGISTRY
)
FILTERED = Counter("clickstream_filtered", "Valid events filtered out on purpose.", ["reason"], registry=REGISTRY)
VALID = Counter("clickstream_valid", "Events that passed validation and filters.", registry=REGISTRY)
ENRICHED = Counter("clickstream_enriched", "Events out of enrichment, by status.", ["status"], registry=REGISTRY)
ROUTED = Counter("clickstream_routed", "Event copies sent to a route.", ["route"], registry=REGISTRY)
WRITTEN = Counter("clickstream_written", "Records Kafka acknowledged, per output topic.", ["topic"], registry=REGISTRY)
LOOKUP_SECONDS = Histogram(
    "clickstream_enrichment_lookup_seconds",
    "Duration of one call to an enrichment store (timeouts included).",
    ["store"],
    buckets=LOOKUP_BUCKETS,
    registry=REGISTRY,
)
END_TO_END_SECONDS = Histogram(
    "clickstream_end_to_end_latency_seconds",
    "Kafka timestamp of the input record to Kafka's acknowledgement of an output record made from it.",
    ["topic"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
