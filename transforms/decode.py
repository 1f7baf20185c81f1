"""Input edge, Python half: Confluent-framed Avro bytes -> typed, event-timestamped ``ClickEvent``.

KafkaIO hands the pipeline raw bytes (Beam's Python ``ReadFromKafka`` has no registry support), so
the framing is decoded here, where a bad record becomes a dead letter instead of a failed bundle. A registry
that is down is not a bad record: the lookup is retried (``transforms.infra_retry``), never dead-lettered.
"""

from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import TimestampedValue
from pydantic import BaseModel, ConfigDict, Field

from schemas.records import ClickEvent, KafkaRecord, SourcedEvent, TrackedDeadLetter, from_avro
from schemas.serde import ConfluentAvroSerde, SerdeError
from telemetry import metrics
from telemetry.endpoint import serve_worker_metrics
from transforms.dead_letters import dead_letter
from transforms.infra_retry import InfraRetryConfig, call_with_retry
from transforms.outputs import multi_output_hints
from transforms.stage_metrics import counter

STAGE = "decode"
_DEAD = "dead_letters"


class DecodeResult(NamedTuple):
    events: beam.PCollection  # PCollection[SourcedEvent], timestamped with the event time
    dead_letters: beam.PCollection  # PCollection[TrackedDeadLetter]


class DecodeConfig(BaseModel):
    """Limits checked on the Kafka record before its bytes are decoded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_record_bytes: int = Field(
        512 * 1024,
        gt=0,
        description="Larger input records are dead-lettered: their enriched outputs would outgrow the brokers' "
        "message size and fail every write of their bundle.",
    )


def record_fault(record: KafkaRecord, max_record_bytes: int) -> tuple[str, str] | None:
    """(code, reason) when the Kafka record itself is unusable, before its bytes are decoded."""
    if record.value is None:
        return "tombstone", "null value (a tombstone): raw events are never deleted by key"
    if not record.value:
        return "empty_value", "empty value: no Confluent header, no event"
    if len(record.value) > max_record_bytes:
        return "oversize_record", f"value is {len(record.value)} bytes; the limit is {max_record_bytes}"
    if record.key is not None:
        try:
            record.key.decode("utf-8")
        except UnicodeDecodeError as err:
            return "invalid_key", f"key is not UTF-8 ({err.reason} at byte {err.start}); keys are user ids"
    return None


class _DecodeFn(beam.DoFn):
    def __init__(self, serde: ConfluentAvroSerde, config: DecodeConfig, retry: InfraRetryConfig):
        self._serde = serde
        self._config = config
        self._retry = retry
        self._ok = counter(STAGE, "ok")
        self._failed = counter(STAGE, "dead_letter")

    def setup(self):
        serve_worker_metrics()

    def process(self, record: KafkaRecord):
        fault = record_fault(record, self._config.max_record_bytes)
        if fault is not None:
            yield self._dead_letter(record, *fault)
            return
        try:
            event = from_avro(ClickEvent, call_with_retry(STAGE, self._retry, lambda: self._serde.decode(record.value)))
        except SerdeError as err:
            yield self._dead_letter(record, err.code, str(err))
            return
        self._ok.inc()
        metrics.DECODED.inc()
        yield TimestampedValue(SourcedEvent(event, record), event.event_time / 1000.0)

    def _dead_letter(self, record: KafkaRecord, code: str, reason: str) -> pvalue.TaggedOutput:
        self._failed.inc()
        counter(STAGE, f"dead_letter_{code}").inc()
        metrics.DEAD_LETTERS.labels(STAGE, code).inc()
        return pvalue.TaggedOutput(_DEAD, dead_letter(STAGE, code, reason, record.value or b"", record))


class DecodeEvents(beam.PTransform[beam.PCollection[KafkaRecord], DecodeResult]):
    """Decodes Confluent Avro records into events; malformed records go to ``dead_letters``."""

    def __init__(
        self, serde: ConfluentAvroSerde, config: DecodeConfig | None = None, retry: InfraRetryConfig | None = None
    ):
        super().__init__()
        self._serde = serde
        self._config = config or DecodeConfig()
        self._retry = retry or InfraRetryConfig()

    def default_type_hints(self):
        return multi_output_hints(KafkaRecord)

    def expand(self, records: beam.PCollection[KafkaRecord]) -> DecodeResult:
        results = records | "DecodeConfluentAvro" >> beam.ParDo(
            _DecodeFn(self._serde, self._config, self._retry)
        ).with_output_types(SourcedEvent, **{_DEAD: TrackedDeadLetter}).with_outputs(_DEAD, main="events")
        return DecodeResult(results.events, results[_DEAD])
