"""Input edge, Python half: Confluent-framed Avro bytes -> typed, event-timestamped ``ClickEvent``.

KafkaIO hands the pipeline raw bytes (Beam's Python ``ReadFromKafka`` has no registry support), so
the framing is decoded here, where a bad record becomes a dead letter instead of a failed bundle.
"""

from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms.window import TimestampedValue

from schemas.records import ClickEvent, KafkaRecord, SourcedEvent, TrackedDeadLetter, from_avro
from schemas.serde import ConfluentAvroSerde, SerdeError
from telemetry import metrics
from telemetry.endpoint import serve_worker_metrics
from transforms.dead_letters import dead_letter
from transforms.outputs import multi_output_hints
from transforms.stage_metrics import counter

STAGE = "decode"
_DEAD = "dead_letters"


class DecodeResult(NamedTuple):
    events: beam.PCollection  # PCollection[SourcedEvent], timestamped with the event time
    dead_letters: beam.PCollection  # PCollection[TrackedDeadLetter]


class _DecodeFn(beam.DoFn):
    def __init__(self, serde: ConfluentAvroSerde):
        self._serde = serde
        self._ok = counter(STAGE, "ok")
        self._failed = counter(STAGE, "dead_letter")

    def setup(self):
        serve_worker_metrics()

    def process(self, record: KafkaRecord):
        try:
            event = from_avro(ClickEvent, self._serde.decode(record.value))
        except SerdeError as err:
            self._failed.inc()
            counter(STAGE, f"dead_letter_{err.code}").inc()
            metrics.DEAD_LETTERS.labels(STAGE, err.code).inc()
            yield pvalue.TaggedOutput(_DEAD, dead_letter(STAGE, err.code, str(err), record.value, record))
            return
        self._ok.inc()
        metrics.DECODED.inc()
        yield TimestampedValue(SourcedEvent(event, record), event.event_time / 1000.0)


class DecodeEvents(beam.PTransform[beam.PCollection[KafkaRecord], DecodeResult]):
    """Decodes Confluent Avro records into events; malformed records go to ``dead_letters``."""

    def __init__(self, serde: ConfluentAvroSerde):
        super().__init__()
        self._serde = serde

    def default_type_hints(self):
        return multi_output_hints(KafkaRecord)

    def expand(self, records: beam.PCollection[KafkaRecord]) -> DecodeResult:
        results = records | "DecodeConfluentAvro" >> beam.ParDo(_DecodeFn(self._serde)).with_output_types(
            SourcedEvent, **{_DEAD: TrackedDeadLetter}
        ).with_outputs(_DEAD, main="events")
        return DecodeResult(results.events, results[_DEAD])
