"""Duplicate event ids: the first record of an id goes on, a later one is dead-lettered (``duplicate_event_id``).

Producers resend on timeouts, so the same event (same ``event_id``, same event time) can arrive twice as two
Kafka records. Counting both would double-count windows and sessions; dropping one silently would break the
reconciliation. So the later record becomes a dead letter that names the first one's position, and every
input record still has exactly one fate.

A redelivery of the *same* record (same topic/partition/offset, e.g. read again after a restart) is not a
duplicate event: it passes, and the end-of-run reconciliation counts it as a duplicate output.

State is one string per id, keyed by ``event_id`` in the global window, dropped by an event-time timer at
``max(event time, arrival) + horizon``. An event-time timer holds the output watermark at its firing time;
the watermark cannot pass the clock + the validation's future skew (later events are rejected upstream), so
a horizon above that skew keeps every timer ahead of the watermark and the windows downstream are not held.
"""

import time
from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import StrUtf8Coder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from schemas.records import Provenance, TrackedDeadLetter, TrackedEvent
from telemetry import metrics
from transforms.dead_letters import dead_letter
from transforms.outputs import multi_output_hints
from transforms.stage_metrics import counter

STAGE = "dedupe"
CODE = "duplicate_event_id"
_DEAD = "dead_letters"


class DedupeConfig(BaseModel):
    """Which repeated event ids are dead-lettered, and for how long an id is remembered."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="Dead-letter later records of an event id already seen.")
    horizon_seconds: int = Field(
        3600,
        ge=1,
        le=7 * 86_400,
        description="How long (event time, from max(event time, arrival)) an event id is remembered; one state "
        "entry per id is kept that long. Must exceed validation.max_future_skew_seconds.",
    )


class DedupeResult(NamedTuple):
    unique: beam.PCollection  # PCollection[TrackedEvent]: the first record of each event id
    dead_letters: beam.PCollection  # PCollection[TrackedDeadLetter]: later records of an id


def _position(provenance: Provenance | None) -> str:
    return f"{provenance.topic}:{provenance.partition}:{provenance.offset}" if provenance else "unknown"


class _FirstOfEachIdFn(beam.DoFn):
    FIRST = ReadModifyWriteStateSpec("first", StrUtf8Coder())
    EXPIRE = TimerSpec("expire", TimeDomain.WATERMARK)

    def __init__(self, horizon_seconds: int):
        self._horizon = horizon_seconds
        self._unique = counter(STAGE, "unique")
        self._duplicates = counter(STAGE, "duplicate")

    def process(
        self,
        keyed: tuple[str, TrackedEvent],
        timestamp=beam.DoFn.TimestampParam,
        first=beam.DoFn.StateParam(FIRST),
        expire=beam.DoFn.TimerParam(EXPIRE),
    ):
        event_id, tracked = keyed
        here = _position(tracked.provenance)
        seen = first.read()
        if seen is None:
            first.write(here)
            expire.set(Timestamp(max(timestamp.micros / 1e6, time.time()) + self._horizon))
        elif seen != here:
            self._duplicates.inc()
            metrics.DEAD_LETTERS.labels(STAGE, CODE).inc()
            original = tracked.source.value if tracked.source else b""
            reason = f"event {event_id} was already read at {seen}"
            yield pvalue.TaggedOutput(
                _DEAD, dead_letter(STAGE, CODE, reason, original, tracked.source, tracked.provenance)
            )
            return
        self._unique.inc()
        yield tracked

    @on_timer(EXPIRE)
    def forget(self, first=beam.DoFn.StateParam(FIRST)):
        first.clear()


class DropDuplicateEvents(beam.PTransform[beam.PCollection[TrackedEvent], DedupeResult]):
    """Passes the first record of each ``event_id``; later records of it become dead letters."""

    def __init__(self, config: DedupeConfig):
        super().__init__()
        self._config = config

    def default_type_hints(self):
        return multi_output_hints(TrackedEvent)

    def expand(self, events: beam.PCollection[TrackedEvent]) -> DedupeResult:
        if not self._config.enabled:
            empty = events.pipeline | "NoDuplicates" >> beam.Create([]).with_output_types(TrackedDeadLetter)
            return DedupeResult(events, empty)
        results = (
            events
            | "KeyByEventId" >> beam.Map(lambda t: (t.record.event_id, t)).with_output_types(tuple[str, TrackedEvent])
            | "FirstOfEachId"
            >> beam.ParDo(_FirstOfEachIdFn(self._config.horizon_seconds))
            .with_output_types(TrackedEvent, **{_DEAD: TrackedDeadLetter})
            .with_outputs(_DEAD, main="unique")
        )
        return DedupeResult(results.unique, results[_DEAD])
