"""Output edge, Python half: typed records -> (key, Confluent Avro value) for KafkaIO or a test sink.

Keys are chosen per output for compaction and ordering: user id for events and sessions, the
window key for metrics, so a compacted topic keeps the latest pane of each window. Elements of
per-record outputs come in an envelope (``TRACKED_TYPES``): its record is encoded, its provenance
rides on the ``OutputRecord`` to the sink, and on to the offset committer.
"""

import json
from collections.abc import Callable
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import pvalue

from schemas.records import TRACKED_TYPES, OutputRecord, TrackedDeadLetter, to_avro
from schemas.serde import ConfluentAvroSerde, SerdeError
from telemetry import metrics
from telemetry.endpoint import serve_worker_metrics
from transforms.dead_letters import dead_letter
from transforms.infra_retry import InfraRetryConfig, call_with_retry
from transforms.outputs import multi_output_hints
from transforms.stage_metrics import counter

STAGE = "encode"
_DEAD = "dead_letters"

KeyFn = Callable[[Any], str | None]


class EncodeResult(NamedTuple):
    records: beam.PCollection  # PCollection[OutputRecord]
    dead_letters: beam.PCollection  # PCollection[TrackedDeadLetter]


class _EncodeFn(beam.DoFn):
    def __init__(self, serde: ConfluentAvroSerde, key_fn: KeyFn, output: str, retry: InfraRetryConfig):
        self._serde = serde
        self._key_fn = key_fn
        self._output = output
        self._retry = retry

    def setup(self):
        self._ok = counter(STAGE, f"{self._output}_ok")
        serve_worker_metrics()

    def process(self, element: Any):
        tracked = isinstance(element, TRACKED_TYPES)
        record, provenance = (element.record, element.provenance) if tracked else (element, None)
        try:
            value = call_with_retry(STAGE, self._retry, lambda: self._serde.encode(to_avro(record)))
        except SerdeError as err:
            counter(STAGE, f"{self._output}_dead_letter").inc()
            metrics.DEAD_LETTERS.labels(STAGE, err.code).inc()
            source = getattr(element, "source", None)
            # The input record's own bytes when there is one; an aggregate has none, so its JSON is kept instead.
            original = source.value if source is not None else json.dumps(to_avro(record), default=repr).encode()
            reason = f"output {self._output}: {err}"
            letter = dead_letter(STAGE, err.code, reason, original, source, provenance)
            yield pvalue.TaggedOutput(_DEAD, letter)
            return
        key = self._key_fn(record)
        self._ok.inc()
        yield OutputRecord(key.encode() if key is not None else None, value, provenance)


class EncodeRecords(beam.PTransform[beam.PCollection[Any], EncodeResult]):
    """Encodes records (or tracked envelopes) of one output; returns ``EncodeResult(records, dead_letters)``."""

    def __init__(self, serde: ConfluentAvroSerde, key_fn: KeyFn, output: str, retry: InfraRetryConfig | None = None):
        super().__init__()
        self._serde = serde
        self._key_fn = key_fn
        self._output = output
        self._retry = retry or InfraRetryConfig()

    def default_type_hints(self):
        return multi_output_hints(Any)

    def expand(self, records: beam.PCollection) -> EncodeResult:
        results = records | "EncodeConfluentAvro" >> beam.ParDo(
            _EncodeFn(self._serde, self._key_fn, self._output, self._retry)
        ).with_output_types(OutputRecord, **{_DEAD: TrackedDeadLetter}).with_outputs(_DEAD, main="records")
        return EncodeResult(results.records, results[_DEAD])
