"""``WriteToKafka``: an idempotent, acks=all producer per worker; a bundle succeeds only when Kafka
acknowledged every record of it.

``finish_bundle`` flushes and raises ``KafkaWriteError`` if any record of the bundle failed or is still
unacknowledged after ``flush_timeout_seconds`` (300 s: a broker restart is waited out, librdkafka keeps
retrying the records): the bundle fails instead of committing a bundle whose output is lost. Flink retries
it; Prism fails the job, and the job started again re-reads what was not completely written. At-least-once: a
retried bundle may write records a second time; consumers dedupe by key / event id. Only then does it emit the
``Provenance`` of each record written (records of per-record outputs carry one), for ``CommitOffsets``.

The producer is a ``RecoveringProducer``: one that stops delivering (librdkafka after a broker restart) is
replaced within ``stall_seconds`` and the bundle's unacknowledged records are sent again.

Each acknowledgement also counts ``clickstream_written_total`` and, for records made from an input record,
observes ``clickstream_end_to_end_latency_seconds``: that record's Kafka timestamp to this acknowledgement.
"""

import functools
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from confluent_kafka import KafkaError

from kafkaio.config import ClientConfig
from kafkaio.producer import RecoveringProducer
from schemas.records import OutputRecord, Provenance
from telemetry.endpoint import serve_worker_metrics
from telemetry.metrics import END_TO_END_SECONDS, WRITTEN

_PRODUCER_DEFAULTS = {"acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4"}


class KafkaWriteError(RuntimeError):
    """Some records of a bundle were not acknowledged by Kafka; the bundle must be retried."""


class _WriteFn(beam.DoFn):
    def __init__(self, topic: str, client: ClientConfig, flush_timeout_seconds: float, stall_seconds: float):
        self._topic = topic
        self._client = client
        self._flush_timeout_seconds = flush_timeout_seconds
        self._stall_seconds = stall_seconds

    def setup(self) -> None:
        self._producer = RecoveringProducer(
            {**_PRODUCER_DEFAULTS, **self._client.resolve()}, self._stall_seconds, f"writer of {self._topic}"
        )
        self._written = beam.metrics.Metrics.counter("kafkaio", f"records_written[{self._topic}]")
        self._written_total = WRITTEN.labels(self._topic)
        self._latency = END_TO_END_SECONDS.labels(self._topic)
        serve_worker_metrics()

    def start_bundle(self) -> None:
        self._failed: list[KafkaError] = []
        self._acked = 0
        self._sent = 0
        self._written_provenance: list[WindowedValue] = []

    def _on_delivery(self, input_timestamp_ms: int | None, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self._acked += 1
            self._written_total.inc()
            if input_timestamp_ms is not None:
                self._latency.observe(max(0.0, time.time() - input_timestamp_ms / 1000.0))
        else:
            self._failed.append(err)

    def process(
        self, record: OutputRecord, timestamp: Timestamp = beam.DoFn.TimestampParam, window: Any = beam.DoFn.WindowParam
    ) -> None:
        input_ms = record.provenance.input_timestamp_ms if record.provenance is not None else None
        on_delivery = functools.partial(self._on_delivery, input_ms)
        while True:
            try:
                self._producer.produce(self._topic, value=record.value, key=record.key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then try again (never drop)
                self._producer.poll(0.1)
        self._sent += 1
        if record.provenance is not None:
            self._written_provenance.append(WindowedValue(record.provenance, timestamp, (window,)))
        self._producer.poll(0)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        remaining = self._producer.flush(self._flush_timeout_seconds)
        if self._failed or remaining:
            first = self._failed[0].str() if self._failed else "no delivery report in time"
            raise KafkaWriteError(
                f"{len(self._failed)} failed and {remaining} unacknowledged of {self._sent} records to "
                f"{self._topic} ({first}); the bundle is retried"
            )
        self._written.inc(self._acked)
        yield from self._written_provenance

    def teardown(self) -> None:
        self._producer.flush(self._flush_timeout_seconds)


class WriteToKafka(beam.PTransform[beam.PCollection[OutputRecord], beam.PCollection[Provenance]]):
    """Writes ``OutputRecord``s (key, Confluent-framed value) to ``topic``; returns the provenance of each
    record Kafka acknowledged."""

    def __init__(
        self, topic: str, client: ClientConfig, flush_timeout_seconds: float = 300.0, stall_seconds: float = 15.0
    ):
        super().__init__()
        self._topic = topic
        self._client = client
        self._flush_timeout_seconds = flush_timeout_seconds
        self._stall_seconds = stall_seconds

    def expand(self, records: beam.PCollection[OutputRecord]) -> beam.PCollection[Provenance]:
        return records | "Produce" >> beam.ParDo(
            _WriteFn(self._topic, self._client, self._flush_timeout_seconds, self._stall_seconds)
        ).with_output_types(Provenance)
