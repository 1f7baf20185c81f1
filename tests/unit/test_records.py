"""Every pipeline element type must travel with Beam's RowCoder, never with a pickling fallback.

A type that silently falls back to ``PickleCoder``/``FastPrimitivesCoder`` still works on the
DirectRunner, so only these checks catch it: larger shuffles and Flink state, and keys that are
not deterministic.
"""

import collections.abc
import typing

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.catalog import schema_json
from schemas.records import (
    RECORD_TYPES,
    ClickEvent,
    DeadLetter,
    EnrichedEvent,
    KafkaRecord,
    OutputRecord,
    Product,
    Provenance,
    SessionSummary,
    SourcedEvent,
    TrackedDeadLetter,
    TrackedEnriched,
    TrackedEvent,
    UserProfile,
    WindowMetric,
)
from tests.unit.conftest import CLICK, batch_options

KAFKA = KafkaRecord(
    key=b"u-000042",
    value=b"\x00\x00\x00\x00\x01payload",
    topic="clickstream.events",
    partition=3,
    offset=1_234_567,
    covers_from=1_234_565,
)
PROVENANCE = Provenance(
    topic="clickstream.events", partition=3, covers_from=1_234_565, offset=1_234_567, part=1, parts=2
)
USER = UserProfile(user_id="u-000042", segment="returning", loyalty_tier="gold", signup_country="DE")
PRODUCT = Product(product_id="sku-1001", category="shoes", brand="Acme", price_minor=12999, currency="EUR")

#: One realistic instance per type (None in the optional fields where that is the realistic case).
SAMPLES: dict[str, tuple] = {
    "KafkaRecord": KAFKA,
    "Provenance": PROVENANCE,
    "OutputRecord": OutputRecord(key=b"u-000042", value=b"\x00\x00\x00\x00\x07\x02ab", provenance=PROVENANCE),
    "ClickEvent": CLICK,
    "UserProfile": USER,
    "Product": PRODUCT,
    "EnrichedEvent": EnrichedEvent(
        event=CLICK, user=USER, product=None, enrichment_status="partial", enrichment_errors=["product_not_found"]
    ),
    "WindowMetric": WindowMetric(
        window_start=1_717_236_000_000,
        window_end=1_717_236_060_000,
        event_type="purchase",
        category="shoes",
        currency="EUR",
        event_count=42,
        amount_count=40,
        amount_sum_minor=519_960,
        amount_avg_minor=12999.0,
        amount_p50_minor=11999.5,
        amount_p95_minor=None,
        amount_p99_minor=None,
        pane_timing="ON_TIME",
        pane_index=0,
    ),
    "SessionSummary": SessionSummary(
        user_id="u-000042",
        session_start=1_717_236_000_123,
        session_end=1_717_236_900_000,
        duration_ms=899_877,
        event_count=17,
        distinct_products=4,
        purchase_count=2,
        purchase_totals_minor={"EUR": 25998, "USD": 1500},
        converted=True,
        pane_timing="LATE",
        pane_index=2,
    ),
    "DeadLetter": (
        DEAD_LETTER := DeadLetter(
            original=b"\x01\xff\xfenot avro",
            key=None,
            topic="clickstream.events",
            partition=0,
            offset=99,
            stage="decode",
            error_code="bad_magic_byte",
            reason="magic byte is 0x01, expected 0x00",
            error_time=1_717_236_001_000,
        )
    ),
    "SourcedEvent": SourcedEvent(event=CLICK, source=KAFKA),
    "TrackedDeadLetter": TrackedDeadLetter(record=DEAD_LETTER, provenance=PROVENANCE),
    "TrackedEvent": TrackedEvent(record=CLICK, provenance=PROVENANCE),
    "TrackedEnriched": TrackedEnriched(
        record=EnrichedEvent(
            event=CLICK, user=USER, product=PRODUCT, enrichment_status="enriched", enrichment_errors=[]
        ),
        provenance=None,
    ),
}


def _has_map(hint: typing.Any) -> bool:
    """Whether a type hint contains a mapping anywhere (Beam encodes maps in iteration order)."""
    origin = typing.get_origin(hint)
    if origin is not None and isinstance(origin, type) and issubclass(origin, collections.abc.Mapping):
        return True
    if hasattr(hint, "_fields"):
        return any(_has_map(h) for h in typing.get_type_hints(hint).values())
    return any(_has_map(a) for a in typing.get_args(hint))


def _sample(record_type: type) -> tuple:
    sample = SAMPLES.get(record_type.__name__)
    assert sample is not None, f"add a realistic {record_type.__name__} to SAMPLES in {__name__}"
    assert type(sample) is record_type
    return sample


_IDS = [t.__name__ for t in RECORD_TYPES]
_DETERMINISTIC = [t for t in RECORD_TYPES if not _has_map(t)]


def test_map_detection_sees_nested_maps():
    assert _has_map(ClickEvent) and _has_map(EnrichedEvent) and _has_map(SessionSummary)
    assert not _has_map(WindowMetric) and not _has_map(DeadLetter) and not _has_map(KafkaRecord)


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=_IDS)
def test_registry_gives_row_coder(record_type):
    coder = beam.coders.registry.get_coder(record_type)
    assert isinstance(coder, beam.coders.RowCoder)
    assert not isinstance(coder, (beam.coders.PickleCoder, beam.coders.FastPrimitivesCoder))
    assert coder.to_type_hint() is record_type


@pytest.mark.parametrize("record_type", RECORD_TYPES, ids=_IDS)
def test_row_coder_round_trips_a_realistic_instance(record_type):
    sample = _sample(record_type)
    coder = beam.coders.registry.get_coder(record_type)
    impl = coder.get_impl()
    for decoded in (coder.decode(coder.encode(sample)), impl.decode_nested(impl.encode_nested(sample))):
        assert decoded == sample
        assert type(decoded) is record_type
        for name, value in sample._asdict().items():
            assert type(getattr(decoded, name)) is type(value), name


@pytest.mark.parametrize("record_type", _DETERMINISTIC, ids=[t.__name__ for t in _DETERMINISTIC])
def test_coders_without_maps_are_deterministic(record_type):
    coder = beam.coders.registry.get_coder(record_type)
    assert coder.is_deterministic()
    assert coder.as_deterministic_coder("GroupByKey") is not None
    sample = _sample(record_type)
    rebuilt = record_type(**sample._asdict())
    assert coder.encode(rebuilt) == coder.encode(sample)


def test_pcollections_of_records_infer_row_coder():
    p = beam.Pipeline(options=batch_options())
    created = p | "Create" >> beam.Create([CLICK])
    mapped = created | "Identity" >> beam.Map(lambda e: e).with_output_types(ClickEvent)
    for pcoll in (created, mapped):
        assert isinstance(beam.coders.registry.get_coder(pcoll.element_type), beam.coders.RowCoder)


def test_records_survive_a_shuffle_in_a_pipeline():
    other = CLICK._replace(event_id="e-2", event_type="page_view", amount_minor=None, currency=None, properties={})
    with TestPipeline(options=batch_options()) as p:
        grouped = (
            p
            | "Create" >> beam.Create([CLICK, other]).with_output_types(ClickEvent)
            | "KeyByUser" >> beam.Map(lambda e: (e.user_id, e))
            | "Group" >> beam.GroupByKey()
            | "Sorted" >> beam.MapTuple(lambda user, events: (user, sorted(events, key=lambda e: e.event_id)))
        )
        assert_that(grouped, equal_to([("u-000042", sorted([CLICK, other], key=lambda e: e.event_id))]))


@pytest.mark.parametrize(
    ("contract", "record_type"),
    [
        ("clickstream_event", ClickEvent),
        ("enriched_event", EnrichedEvent),
        ("window_metric", WindowMetric),
        ("session_summary", SessionSummary),
        ("dead_letter", DeadLetter),
    ],
)
def test_record_types_have_their_contracts_fields(contract, record_type):
    """Each contract record mirrors its .avsc: same field names in the same order, optional where nullable."""
    fields = schema_json(contract)["fields"]
    hints = typing.get_type_hints(record_type)
    assert [f["name"] for f in fields] == list(record_type._fields)
    for field in fields:
        nullable = isinstance(field["type"], list) and "null" in field["type"]
        assert nullable == (type(None) in typing.get_args(hints[field["name"]])), field["name"]
