"""Pressure signals for the rate limiter, read from the systems downstream of the producer."""

import logging
from typing import Optional

import httpx
from confluent_kafka import Consumer, KafkaException, TopicPartition

_LOG = logging.getLogger(__name__)


class ConsumerLag:
    """Total lag of a consumer group on a topic: end offsets minus committed offsets, over all partitions.

    A partition the group has never committed counts from its low watermark, so a pipeline that has
    not started yet shows as lagging instead of healthy.
    """

    def __init__(self, client_config: dict[str, str], group: str, topic: str, timeout: float = 5.0):
        self._topic = topic
        self._timeout = timeout
        self._consumer = Consumer(
            {**client_config, "group.id": group, "enable.auto.commit": False, "client.id": "ingestion-lag-probe"}
        )

    def per_partition(self) -> dict[int, int]:
        metadata = self._consumer.list_topics(self._topic, timeout=self._timeout)
        partitions = [TopicPartition(self._topic, p) for p in metadata.topics[self._topic].partitions]
        committed = self._consumer.committed(partitions, timeout=self._timeout)
        lags = {}
        for tp in committed:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, tp.partition), timeout=self._timeout
            )
            start = tp.offset if tp.offset >= 0 else low
            lags[tp.partition] = max(0, high - start)
        return lags

    def read(self) -> Optional[float]:
        try:
            return float(sum(self.per_partition().values()))
        except (KafkaException, KeyError) as err:
            _LOG.warning("consumer lag unavailable: %s", err)
            return None

    def close(self) -> None:
        self._consumer.close()


class PrometheusLatency:
    """The pipeline's end-to-end latency quantile, from a Prometheus server's query API."""

    def __init__(self, prometheus_url: str, query: str, timeout: float = 2.0):
        self._url = prometheus_url.rstrip("/") + "/api/v1/query"
        self._query = query
        self._timeout = timeout

    def read(self) -> Optional[float]:
        try:
            response = httpx.get(self._url, params={"query": self._query}, timeout=self._timeout)
            response.raise_for_status()
            result = response.json()["data"]["result"]
            values = [float(r["value"][1]) for r in result]
        except (httpx.HTTPError, KeyError, ValueError) as err:
            _LOG.warning("latency signal unavailable: %s", err)
            return None
        finite = [v for v in values if v == v]  # NaN when the histogram is empty
        return max(finite) if finite else None
