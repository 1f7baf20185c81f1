"""Validate + filter: contract rules reject (dead letter with a reason); business predicates filter (counted).

The split matters downstream: a rejected event is a producer bug someone must fix and replay; a
filtered event (a bot, an internal test user) is correct data we choose not to count. The rules
themselves live in ``schemas.rules``, shared with the ingestion service.
"""

import re
import time
from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue

from schemas.records import Provenance, SourcedEvent, TrackedDeadLetter, TrackedEvent
from schemas.rules import ValidationConfig, filter_reason, rejection
from telemetry import metrics
from telemetry.endpoint import serve_worker_metrics
from transforms.dead_letters import dead_letter
from transforms.outputs import multi_output_hints
from transforms.stage_metrics import counter

STAGE = "validate"
_DEAD = "dead_letters"
_FILTERED = "filtered"


class ValidationResult(NamedTuple):
    valid: beam.PCollection  # PCollection[TrackedEvent]
    dead_letters: beam.PCollection  # PCollection[TrackedDeadLetter]
    filtered: beam.PCollection  # PCollection[TrackedEvent]: out of scope on purpose, for auditing counts


class _ValidateFn(beam.DoFn):
    def __init__(self, config: ValidationConfig):
        self._config = config
        self._valid = counter(STAGE, "valid")
        self._invalid = counter(STAGE, "dead_letter")
        self._filtered = counter(STAGE, "filtered")

    def setup(self):
        self._bots = re.compile(self._config.bot_user_agent_pattern)
        serve_worker_metrics()

    def process(self, item: SourcedEvent):
        event = item.event
        rejected = rejection(event, self._config, int(time.time() * 1000))
        if rejected:
            code, reason = rejected
            self._invalid.inc()
            counter(STAGE, f"dead_letter_{code}").inc()
            metrics.DEAD_LETTERS.labels(STAGE, code).inc()
            yield pvalue.TaggedOutput(
                _DEAD, dead_letter(STAGE, code, f"event {event.event_id}: {reason}", item.source.value, item.source)
            )
            return
        why = filter_reason(event, self._config, self._bots)
        if why:
            self._filtered.inc()
            counter(STAGE, f"filtered_{why}").inc()
            metrics.FILTERED.labels(why).inc()
            yield pvalue.TaggedOutput(_FILTERED, TrackedEvent(event, Provenance.of(item.source), item.source))
            return
        self._valid.inc()
        metrics.VALID.inc()
        yield TrackedEvent(event, Provenance.of(item.source), item.source)


class ValidateEvents(beam.PTransform[beam.PCollection[SourcedEvent], ValidationResult]):
    """Applies contract rules and business filters; returns ``ValidationResult(valid, dead_letters)``."""

    def __init__(self, config: ValidationConfig):
        super().__init__()
        self._config = config

    def default_type_hints(self):
        return multi_output_hints(SourcedEvent)

    def expand(self, events: beam.PCollection[SourcedEvent]) -> ValidationResult:
        fn = _ValidateFn(self._config)
        results = events | "ValidateAndFilter" >> beam.ParDo(fn).with_output_types(
            TrackedEvent, **{_DEAD: TrackedDeadLetter, _FILTERED: TrackedEvent}
        ).with_outputs(_DEAD, _FILTERED, main="valid")
        return ValidationResult(results.valid, results[_DEAD], results[_FILTERED])
