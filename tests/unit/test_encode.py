import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.catalog import schema_json
from schemas.records import EnrichedEvent, KafkaRecord, Provenance, TrackedEnriched, from_avro
from schemas.serde import ConfluentAvroSerde
from tests.unit.conftest import batch_options, make_event
from transforms.encode import EncodeRecords


def test_records_are_framed_and_keyed_and_misfits_are_dead_lettered(registry):
    serde = ConfluentAvroSerde(registry, schema_json("enriched_event"), "enriched-value")
    serde.schema_id()  # register before the serde is pickled to workers (as build_pipeline does)
    good = [
        EnrichedEvent(make_event(event_id=f"e{i}", user_id=f"u{i}"), None, None, "not_enriched", ["x"]) for i in (1, 2)
    ]
    misfit = EnrichedEvent(make_event(event_id="bad"), None, None, "half_done", [])  # not an EnrichmentStatus symbol
    route_copy = Provenance("raw", 4, 7, 9, 1, 2)  # the second of two routes of the record at offset 9
    source = KafkaRecord(b"u-key", b"\x00original-bytes", "raw", 4, 9, 7)
    inputs = [TrackedEnriched(good[0], route_copy), good[1], TrackedEnriched(misfit, route_copy, source)]

    with TestPipeline(options=batch_options()) as p:
        result = p | beam.Create(inputs) | EncodeRecords(serde, lambda e: e.event.user_id, "enriched")
        decoded = result.records | beam.Map(
            lambda r: (r.key, from_avro(EnrichedEvent, serde.decode(r.value)), r.provenance)
        )
        expected = [(good[0].event.user_id.encode(), good[0], route_copy), (b"u2", good[1], None)]
        assert_that(decoded, equal_to(expected), label="encoded")
        assert_that(
            result.dead_letters
            | beam.Map(
                lambda d: (
                    (d.record.stage, d.record.error_code, "half_done" in d.record.reason),
                    (d.record.original, d.record.key, d.record.topic, d.record.partition, d.record.offset),
                    d.provenance,
                )
            ),
            equal_to([(("encode", "encode_failed", True), (source.value, b"u-key", "raw", 4, 9), route_copy)]),
            label="dead",
        )
