"""Pressure signals for the rate limiter, read from the systems downstream of the producer."""

import logging

import httpx
from confluent_kafka import KafkaException

from ingestion.consumer_lag import LagReader

_LOG = logging.getLogger(__name__)


class ConsumerLag:
    """Total lag of a consumer group on a topic, over all partitions (see ``LagReader`` for what counts).

    A partition the group has never committed counts everything still retained, so a pipeline that has
    not started yet shows as lagging instead of healthy.
    """

    def __init__(self, client_config: dict[str, str], group: str, topic: str, timeout: float = 5.0):
        self._reader = LagReader(client_config, [group], [topic], timeout)

    def read(self) -> float | None:
        try:
            partitions = self._reader.read()
        except (KafkaException, TimeoutError) as err:
            _LOG.warning("consumer lag unavailable: %s", err)
            return None
        if not partitions:  # the topic does not exist (yet): no opinion, rather than "healthy"
            return None
        return float(sum(p.lag for p in partitions))


class PrometheusLatency:
    """The pipeline's end-to-end latency quantile, from a Prometheus server's query API."""

    def __init__(self, prometheus_url: str, query: str, timeout: float = 2.0):
        self._url = prometheus_url.rstrip("/") + "/api/v1/query"
        self._query = query
        self._timeout = timeout

    def read(self) -> float | None:
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
