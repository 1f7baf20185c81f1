import copy
import struct

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.catalog import schema_json
from schemas.records import Provenance, to_avro
from schemas.serde import ConfluentAvroSerde
from tests.unit.conftest import RAW_TOPIC, batch_options, frame, kafka_record, make_event
from transforms.decode import DecodeConfig, DecodeEvents
from transforms.infra_retry import InfraRetryConfig


class _FlakyRegistry:
    """Answers like ``inner`` after failing ``failures`` lookups the way an unreachable registry does."""

    def __init__(self, inner, failures: int) -> None:
        self._inner, self._failures = inner, failures

    def register(self, subject: str, schema_str: str) -> int:
        return self._inner.register(subject, schema_str)

    def schema_by_id(self, schema_id: int) -> str:
        if self._failures:
            self._failures -= 1
            raise ConnectionError("connection refused")
        return self._inner.schema_by_id(schema_id)


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
    extra_symbol = copy.deepcopy(schema_json("clickstream_event"))  # the catalogue caches its dicts
    for field in extra_symbol["fields"]:
        if field["name"] == "event_type":
            field["type"]["symbols"].append("teleport")
    teleport = ConfluentAvroSerde(registry, extra_symbol, "teleport-value").encode(
        to_avro(make_event(event_type="teleport"))
    )
    cases = {
        "wrong_magic": (b"\x07" + good[1:], "bad_magic_byte"),
        "tombstone": (None, "tombstone"),
        "empty": (b"", "empty_value"),
        "oversize": (good + b"\x00" * 600, "oversize_record"),
        "unknown_symbol": (teleport, "unknown_enum_symbol"),
        "short": (b"\x00\x00", "truncated_record"),
        "truncated": (good[:12], "truncated_record"),
        "unknown_id": (b"\x00" + struct.pack(">I", 4242) + good[5:], "unknown_schema_id"),
        "unresolvable": (incompatible, "schema_resolution_failed"),
        "trailing_garbage": (good + b"\xff\xff", "malformed_avro"),
        "bad_enum_index": (b"\x00" + struct.pack(">I", 1) + b"\x02x\xc6\x01" + b"\x00" * 30, "malformed_avro"),
        "endless_varint": (b"\x00" + struct.pack(">I", 1) + b"\xff" * 30, "truncated_record"),
    }
    records = [kafka_record(value, offset=i) for i, (value, _) in enumerate(cases.values())]
    expected = [(i, code, value or b"") for i, (value, code) in enumerate(cases.values())]
    records.append(kafka_record(good, offset=len(records), key=b"\xff\xfeu1"))
    expected.append((len(expected), "invalid_key", good))
    cases["non_utf8_key"] = (good, "invalid_key")

    with TestPipeline(options=batch_options()) as p:
        result = p | beam.Create(records) | DecodeEvents(reader, DecodeConfig(max_record_bytes=len(good) + 100))
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


def test_a_registry_outage_is_waited_out_not_dead_lettered(registry, raw_writer):
    events = [make_event(event_id=f"e-{i}") for i in range(3)]
    records = [kafka_record(frame(raw_writer, e), offset=i) for i, e in enumerate(events)]
    reader = ConfluentAvroSerde(_FlakyRegistry(registry, failures=3), schema_json("clickstream_event"))
    retry = InfraRetryConfig(initial_backoff_seconds=0.01, max_backoff_seconds=0.02)

    with TestPipeline(options=batch_options()) as p:
        result = p | beam.Create(records) | DecodeEvents(reader, retry=retry)
        assert_that(result.events | beam.Map(lambda s: s.event.event_id), equal_to(["e-0", "e-1", "e-2"]))
        assert_that(result.dead_letters, equal_to([]), label="no_dead_letters")


def test_a_persistent_registry_outage_fails_the_bundle_instead_of_dead_lettering(registry, raw_writer):
    reader = ConfluentAvroSerde(_FlakyRegistry(registry, failures=10**6), schema_json("clickstream_event"))
    retry = InfraRetryConfig(max_wait_seconds=0.3, initial_backoff_seconds=0.01, max_backoff_seconds=0.05)
    with pytest.raises(Exception, match="registry lookup of schema id"), TestPipeline(options=batch_options()) as p:
        records = [kafka_record(frame(raw_writer, make_event()))]
        result = p | beam.Create(records) | DecodeEvents(reader, retry=retry)
        assert_that(result.dead_letters, equal_to([]))
