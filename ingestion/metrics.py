"""The ingestion service's Prometheus metrics (prometheus-client, served on its own /metrics).

Names follow Prometheus conventions: ``_total`` counters, base units in names (seconds).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Latency buckets resolve p99/p999 around a one-second SLO (librdkafka acks are usually ms).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class IngestionMetrics:
    """One set of metrics on its own registry (tests and several services per process stay separate)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.published = Counter(
            "ingestion_events_published_total", "Events acknowledged by Kafka.", ["topic"], registry=r
        )
        self.publish_failures = Counter(
            "ingestion_publish_failures_total", "Events Kafka did not acknowledge, by error.", ["reason"], registry=r
        )
        self.publish_latency = Histogram(
            "ingestion_publish_latency_seconds",
            "Time from produce() to the delivery report.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "ingestion_events_rejected_total", "Events rejected by validation, by reason code.", ["reason"], registry=r
        )
        self.received = Counter(
            "ingestion_events_received_total", "Events received from sources.", ["source"], registry=r
        )
        self.rate_limit = Gauge(
            "ingestion_rate_limit_events_per_second", "Current publish rate allowed by the limiter.", registry=r
        )
        self.queue_depth = Gauge(
            "ingestion_producer_queue_depth_messages", "Messages waiting in the producer's local queue.", registry=r
        )
        self.buffer_full = Counter(
            "ingestion_producer_queue_full_total", "Times the local queue was full and the sender waited.", registry=r
        )
