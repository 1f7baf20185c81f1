"""Duplicate event ids: the first record goes on, a later one is one dead letter naming the first; an id is
forgotten once the watermark passes its horizon; a redelivered record (same offset) is not a duplicate."""

import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from beam_pipelines.settings import SettingsError, load_settings
from schemas.records import Provenance, TrackedEvent
from tests.unit.conftest import kafka_record, make_event, streaming_options
from transforms.dedupe import DedupeConfig, DropDuplicateEvents

NOW_S = int(time.time())
HORIZON = 600


def _tracked(event_id: str, offset: int) -> TrackedEvent:
    source = kafka_record(f"bytes-of-{event_id}@{offset}".encode(), offset=offset)
    return TrackedEvent(make_event(event_id=event_id, event_time=NOW_S * 1000), Provenance.of(source), source)


def _run(stream: TestStream, config: DedupeConfig = DedupeConfig(horizon_seconds=HORIZON)):
    """(offsets passed on, (code, reason, original, offset) of each dead letter), asserted inside the pipeline."""

    def check(expected_unique, expected_dead):
        with TestPipeline(options=streaming_options()) as p:
            result = p | stream | DropDuplicateEvents(config)
            unique = result.unique | "Offsets" >> beam.Map(lambda t: t.provenance.offset)
            dead = result.dead_letters | "Rows" >> beam.Map(
                lambda d: (d.record.error_code, d.record.reason, d.record.original, d.record.offset, d.provenance)
            )
            assert_that(unique, equal_to(expected_unique), label="unique")
            assert_that(dead, equal_to(expected_dead), label="dead")

    return check


def _stream(*batches: list[TrackedEvent], watermarks: tuple[int, ...] = ()) -> TestStream:
    stream = TestStream(coder=beam.coders.registry.get_coder(TrackedEvent))
    for i, batch in enumerate(batches):
        if i < len(watermarks):
            stream.advance_watermark_to(watermarks[i])
        stream.add_elements([TimestampedValue(t, NOW_S) for t in batch])
    return stream.advance_watermark_to_infinity()


def test_a_later_record_of_an_id_is_one_dead_letter_that_names_the_first():
    first, again, other = _tracked("e1", 0), _tracked("e1", 3), _tracked("e2", 1)
    reason = f"event e1 was already read at {first.provenance.topic}:0:0"
    _run(_stream([first, other], [again]))(
        [0, 1], [("duplicate_event_id", reason, b"bytes-of-e1@3", 3, again.provenance)]
    )


def test_a_redelivered_record_is_not_a_duplicate_event():
    """The same offset again (a re-read after a restart) passes; the reconciliation counts it as a redelivery."""
    _run(_stream([_tracked("e1", 0)], [_tracked("e1", 0)]))([0, 0], [])


def test_an_id_is_forgotten_once_the_watermark_passes_its_horizon():
    late_copy = _tracked("e1", 7)
    # Past the expiry, which counts from the clock when the first record is processed (now, not at import).
    forgotten = int(time.time()) + HORIZON + 120
    _run(_stream([_tracked("e1", 0)], [late_copy], watermarks=(NOW_S - 60, forgotten)))([0, 7], [])


def test_disabled_passes_every_record():
    _run(_stream([_tracked("e1", 0), _tracked("e1", 3)]), DedupeConfig(enabled=False))([0, 3], [])


def test_a_horizon_within_the_future_skew_is_refused():
    """An id's expiry timer would fall behind the watermark and hold every window downstream."""
    with pytest.raises(SettingsError, match="dedupe.horizon_seconds"):
        load_settings(overrides=("dedupe.horizon_seconds=60", "validation.max_future_skew_seconds=300"))
