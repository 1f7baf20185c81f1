import struct

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.catalog import schema_json
from schemas.records import Provenance
from schemas.serde import ConfluentAvroSerde
from tests.unit.conftest import RAW_TOPIC, batch_options, frame, kafka_record, make_event
from transforms.decode import DecodeEvents


@pytest.fixture
def reader(registry) -> ConfluentAvroSerde:
    return ConfluentAvroSerde(registry, schema_json("clickstream_event"))


def test_valid_records_decode_with_event_time_timestamps(raw_writer, reader):
    events = [make_event(event_id=f"e-{i}", event_time=1_700_000_000_000 + i * 1000) for i in range(3)]
    records = [kafka_record(frame(raw_writer, e), offset=i) for i, e in enumerate(events)]

    with TestPipeline(options=batch_options()) as p:
        result = p | beam.Create(records) | DecodeEvents(reader)
        timestamps = result.events | beam.Map(
            lambda s, ts=beam.DoFn.TimestampParam: (s.event.event_id, s.source.offset, int(ts.micros // 1000))
        )
        assert_that(timestamps, equal_to([(e.event_id, i, e.event_time) for i, e in enumerate(events)]), label="events")
        assert_that(result.dead_letters, equal_to([]), label="no_dead_letters")


def test_each_malformed_input_is_dead_lettered_with_its_reason(registry, raw_writer, reader):
    good = frame(raw_writer, make_event())
    incompatible = ConfluentAvroSerde(
        registry,
        {
            "type": "record",
            "name": "ClickEvent",
            "namespace": "clickstream.events",
            "fields": [{"name": "user_id", "type": "int"}],
        },
        "other-value",
    ).encode({"user_id": 5})
    cases = {
        "wrong_magic": (b"\x07" + good[1:], "bad_magic_byte"),
        "short": (b"\x00\x00", "truncated_record"),
        "truncated": (good[:12], "truncated_record"),
        "unknown_id": (b"\x00" + struct.pack(">I", 4242) + good[5:], "unknown_schema_id"),
        "unresolvable": (incompatible, "schema_resolution_failed"),
        "trailing_garbage": (good + b"\xff\xff", "malformed_avro"),
        "bad_enum_index": (b"\x00" + struct.pack(">I", 1) + b"\x02x\xc6\x01" + b"\x00" * 30, "malformed_avro"),
        "endless_varint": (b"\x00" + struct.pack(">I", 1) + b"\xff" * 30, "truncated_record"),
    }
    records = [kafka_record(value, offset=i) for i, (value, _) in enumerate(cases.values())]
    expected = [(i, code, value) for i, (value, code) in enumerate(cases.values())]

    with TestPipeline(options=batch_options()) as p:
        result = p | beam.Create(records) | DecodeEvents(reader)
        dead = result.dead_letters | beam.Map(lambda d: (d.record.offset, d.record.error_code, d.record.original))
        assert_that(dead, equal_to(expected), label="dead_letters")
        assert_that(
            result.dead_letters | beam.Map(lambda d: (d.record.stage, d.record.topic, bool(d.record.reason))),
            equal_to([("decode", RAW_TOPIC, True)] * len(cases)),
            label="source",
        )
        assert_that(
            result.dead_letters | beam.Map(lambda d: d.provenance),
            equal_to([Provenance(RAW_TOPIC, 0, i, i, 0, 1) for i in range(len(cases))]),
            label="provenance",
        )
        assert_that(result.events, equal_to([]), label="no_events")
