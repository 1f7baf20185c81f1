"""The whole graph on the DirectRunner: Confluent-framed bytes in, every output decoded and asserted.

A small, hand-made dataset where every record's fate is known: two schema versions, a malformed
record, an invalid and a filtered event, an event sent twice (counted once), unknown users/products,
a late and a too-late arrival.
The sinks are the assertions; the reconciliation (in = routed + dead + filtered) is computed from the outputs.
"""

import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue

from beam_pipelines.clickstream import Lookups, build_pipeline, output_contract
from beam_pipelines.settings import load_settings
from kafkaio import AckLedger
from runners.reconcile import InputRecord, reconcile
from schemas.catalog import schema_json
from schemas.records import KafkaRecord, Product, UserProfile, epoch_millis, to_avro
from schemas.serde import ConfluentAvroSerde, SerdeError
from tests.unit.conftest import RAW_TOPIC, make_event, streaming_options
from tests.unit.lookup_fakes import InMemoryLookupHandler

T0 = (int(time.time()) // 60 - 60) * 60 * 1000  # a minute boundary an hour ago, in ms
USERS = {u: UserProfile(u, "returning", "gold", "DE") for u in ("u1", "u2")}
PRODUCTS = {
    "p1": Product("p1", "electronics", "acme", 12_500, "EUR"),
    "p2": Product("p2", "books", "inkwell", 60_000, "EUR"),
}


def _event(n, user, event_type, at_s, product=None, amount=None, **fields):
    return make_event(
        event_id=f"e{n}",
        user_id=user,
        event_type=event_type,
        event_time=T0 + at_s * 1000,
        product_id=product,
        amount_minor=amount,
        currency="EUR" if amount is not None else None,
        **fields,
    )


def _dataset(registry):
    """(arrival second, kind, bytes) in arrival order, plus the known fate of each record."""
    v1 = ConfluentAvroSerde(registry, schema_json("clickstream_event.v1"), f"{RAW_TOPIC}-value")
    v2 = ConfluentAvroSerde(registry, schema_json("clickstream_event.v2"), f"{RAW_TOPIC}-value")

    def frame(event, version=2):
        record = to_avro(event)
        if version == 1:
            record.pop("referrer")
            return v1.encode(record)
        return v2.encode(record)

    bot_ua = "Mozilla/5.0 (compatible; Googlebot/2.1)"
    return [
        (6, frame(_event(1, "u1", "page_view", 5, referrer="newsletter"))),
        (16, frame(_event(2, "u1", "product_view", 15, "p1"), version=1)),
        (21, frame(_event(3, "u2", "page_view", 20), version=1)),
        (26, frame(_event(4, "u1", "add_to_cart", 25, "p1"))),
        (41, frame(_event(5, "u1", "purchase", 40, "p1", 12_500))),
        (44, frame(_event(5, "u1", "purchase", 40, "p1", 12_500))),  # resent by the producer -> duplicate
        (46, frame(_event(6, "u2", "product_view", 45, "p404"))),  # unknown product -> partial
        (51, frame(_event(7, "u3", "page_view", 50))),  # unknown user -> not_enriched -> unrouted
        (52, b"\x01" + frame(_event(8, "u2", "page_view", 51))[1:]),  # wrong magic byte
        (54, frame(_event(9, "u2", "purchase", 53, "p2"))),  # purchase without amount -> invalid
        (56, frame(_event(10, "u2", "page_view", 55, user_agent=bot_ua))),  # bot -> filtered
        (71, frame(_event(11, "u2", "purchase", 70, "p2", 60_000))),  # next window, high value
        (200, frame(_event(12, "u1", "search", 30))),  # late: window [0, 60) expired at 60 + 300 s
        (510, frame(_event(13, "u2", "page_view", 10))),  # too late for windows, fine for sessions
    ]


def _stream(dataset):
    """Replays ``dataset`` with a log-append-time watermark: just behind each record's arrival."""
    stream = TestStream(coder=beam.coders.registry.get_coder(KafkaRecord))
    stream.advance_processing_time(int(time.time()) + 30)
    for offset, (arrival_s, value) in enumerate(dataset):
        arrival_ms = T0 + arrival_s * 1000
        stream.advance_watermark_to((arrival_ms - 1000) / 1000).advance_processing_time(1)
        record = KafkaRecord(b"k", value, RAW_TOPIC, 0, offset)
        stream.add_elements([TimestampedValue(record, arrival_ms / 1000)])
    return stream.advance_processing_time(1).advance_watermark_to_infinity().advance_processing_time(2)


def _window(start_s, event_type, category, currency, count, amount_sum, timing="ON_TIME", index=0):
    return (T0 + start_s * 1000, event_type, category, currency, count, amount_sum, timing, index)


EXPECTED = {
    "orders": {"e5", "e11"},
    "high_value_alerts": {"e11"},
    "enriched": {"e1", "e2", "e3", "e4", "e5", "e6", "e11", "e12", "e13"},
    "unrouted": {"e7"},
    "window_metrics": {
        _window(0, "page_view", "unknown", "", 3, 0),
        _window(0, "product_view", "electronics", "", 1, 0),
        _window(0, "product_view", "unknown", "", 1, 0),
        _window(0, "add_to_cart", "electronics", "", 1, 0),
        _window(0, "purchase", "electronics", "EUR", 1, 12_500),
        _window(0, "search", "unknown", "", 1, 0, timing="LATE"),
        _window(60, "purchase", "books", "EUR", 1, 60_000),
    },
    "sessions": {
        ("u1", T0 + 5_000, T0 + 40_000, 35_000, 5, 1, 1, (("EUR", 12_500),), True, "ON_TIME"),
        ("u2", T0 + 10_000, T0 + 70_000, 60_000, 4, 2, 1, (("EUR", 60_000),), True, "ON_TIME"),
        ("u3", T0 + 50_000, T0 + 50_000, 0, 1, 0, 0, (), False, "ON_TIME"),
    },
    "filtered": {"e10"},
    "dead_letters": {
        ("dedupe", "duplicate_event_id", 5),
        ("decode", "bad_magic_byte", 8),
        ("validate", "missing_field", 9),
    },
}
ROUTES = ("orders", "high_value_alerts", "enriched", "unrouted")


def _project(name, row):
    """The fields each output is asserted on, from the decoded Avro record."""
    if name == "window_metrics":
        return (
            row["window_start"],
            row["event_type"],
            row["category"],
            row["currency"],
            row["event_count"],
            row["amount_sum_minor"],
            row["pane_timing"],
            row["pane_index"],
        )
    if name == "sessions":
        return (
            row["user_id"],
            row["session_start"],
            row["session_end"],
            row["duration_ms"],
            row["event_count"],
            row["distinct_products"],
            row["purchase_count"],
            tuple(sorted(row["purchase_totals_minor"].items())),
            row["converted"],
            row["pane_timing"],
        )
    if name == "dead_letters":
        return row["stage"], row["error_code"], row["offset"]
    if name == "filtered":
        return row["event_id"]
    return row["event"]["event_id"]


def _decoded(registry, name):
    serde = ConfluentAvroSerde(registry, schema_json(output_contract(name, load_settings()).contract))

    def decode(record):
        row = serde.decode(record.value)
        for field in ("window_start", "session_start", "session_end"):
            if field in row:
                row[field] = epoch_millis(row[field])
        return _project(name, row)

    return decode


def test_whole_pipeline_outputs_and_reconciliation(registry):
    dataset = _dataset(registry)
    settings = load_settings(overrides=("enrichment.lookup_timeout_seconds=2",))
    lookups = Lookups(InMemoryLookupHandler("user", USERS), InMemoryLookupHandler("product", PRODUCTS))

    def check(name):
        def matches(actual):
            assert set(actual) == EXPECTED[name], f"{name}: {sorted(actual)} != {sorted(EXPECTED[name])}"
            assert len(actual) == len(EXPECTED[name]), f"{name}: duplicates in {sorted(actual)}"

        return matches

    class Sink(beam.PTransform):
        """Hands on the provenance of its records, as ``WriteToKafka`` does once they are written."""

        def expand(self, records):
            return records | "Written" >> beam.FlatMap(lambda r: [r.provenance] if r.provenance else [])

    inputs = [InputRecord(0, offset, _event_id(registry, value)) for offset, (_, value) in enumerate(dataset)]

    def reconciles(fates):
        routed = {name: [i for n, i in fates if n == name] for name in ROUTES}
        filtered = [i for n, i in fates if n == "filtered"]
        dead = [(0, i) for n, i in fates if n == "dead_letters"]
        result = reconcile(inputs, routed, filtered, dead)
        assert result.ok and not result.duplicates, result.line()
        assert (result.records_in, result.routed, result.dead_lettered, result.filtered) == (14, 10, 3, 1)

    def all_committed(written):
        ledger = AckLedger(0)
        for part in written:
            ledger.acknowledge(part)
        assert (ledger.position, len(ledger)) == (len(dataset), 0), (ledger.position, sorted(written))

    with TestPipeline(options=streaming_options()) as p:
        built = build_pipeline(p, settings, _stream(dataset), lambda name, topic: Sink(), registry, lookups)
        outputs = built.outputs
        assert sorted(outputs) == sorted(EXPECTED)
        for name, records in outputs.items():
            decoded = records | f"Decode[{name}]" >> beam.Map(_decoded(registry, name))
            assert_that(decoded, check(name), label=f"Check[{name}]")
        # Every input record completely written: the offset committer would commit past the last one.
        assert_that(built.written, all_committed, label="offsets")
        # Reconciliation from the outputs themselves: every input record routed, dead-lettered or filtered, once.
        fates = [
            outputs[name] | f"Fate[{name}]" >> beam.Map(_fate(registry, name))
            for name in (*ROUTES, "filtered", "dead_letters")
        ] | "AllFates" >> beam.Flatten()
        assert_that(fates, reconciles, label="reconciliation")


def _event_id(registry, value):
    try:
        return ConfluentAvroSerde(registry, schema_json("clickstream_event")).decode(value)["event_id"]
    except SerdeError:
        return None


def _fate(registry, name):
    decode = _decoded(registry, name)

    def fate(record):
        projected = decode(record)
        return name, projected[2] if name == "dead_letters" else projected

    return fate


def test_output_contracts_know_every_output_and_refuse_others():
    settings = load_settings()
    assert {output_contract(name, settings).contract for name in settings.route_names()} == {"enriched_event"}
    assert output_contract("sessions", settings).contract == "session_summary"
    with pytest.raises(KeyError, match="no output 'oders'"):
        output_contract("oders", settings)
