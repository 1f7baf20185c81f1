"""Schema evolution of the clickstream contract, as the pipeline meets it in production.

Producers upgrade on their own schedule, so one topic carries v1 and v2 records at once: the pipeline
(reader = catalog ``clickstream_event``) must read both, an older consumer must still read v2, and a
writer that breaks the contract must fail as ``schema_resolution_failed`` (a dead letter), never as
an unhandled exception.
"""

import copy
import io
import json
from typing import Any

import fastavro
import pytest

from schemas import catalog
from schemas.records import ClickEvent, from_avro, to_avro
from schemas.registry import InMemoryRegistry
from schemas.serde import ConfluentAvroSerde, SchemaResolutionError

SUBJECT = "clickstream.events-value"

V2_EVENT = ClickEvent(
    event_id="4f9c2a1e-8b7d-4c3e-9a6f-2d1b0c9e8f7a",
    event_type="add_to_cart",
    user_id="u-000042",
    session_hint=None,
    product_id="sku-1001",
    amount_minor=12999,
    currency="EUR",
    event_time=1_717_236_000_123,
    device="tablet",
    country="NL",
    user_agent="Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    referrer="https://news.example.com/deals",
    properties={"page": "/p/sku-1001", "campaign": "spring"},
)
V1_EVENT = V2_EVENT._replace(referrer=None)


def _v1_dict(event: ClickEvent) -> dict[str, Any]:
    record = to_avro(event)
    del record["referrer"]
    return record


def _write(schema: Any, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def _read(data: bytes, writer: Any, reader: Any) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(data), writer, reader)


def _variant(contract: str, edit) -> dict[str, Any]:
    """A copy of a contract's JSON with ``edit(fields_by_name, schema)`` applied."""
    schema = copy.deepcopy(catalog.schema_json(contract))
    edit({f["name"]: f for f in schema["fields"]}, schema)
    return schema


# --- the catalog -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(catalog.CONTRACTS))
def test_every_contract_parses(name):
    parsed = fastavro.parse_schema(catalog.schema_json(name))
    assert parsed["type"] == "record"
    assert catalog.schema_json(name) is catalog.schema_json(name), "contracts are loaded once and cached"
    text = catalog.canonical(catalog.schema_json(name))
    assert json.loads(text) == catalog.schema_json(name)
    fastavro.parse_schema(json.loads(text), named_schemas={})


def test_pipeline_reads_with_v2():
    assert catalog.schema_json("clickstream_event") == catalog.schema_json("clickstream_event.v2")


def test_unknown_contract_names_the_known_ones():
    with pytest.raises(KeyError, match="clickstream_event.v1"):
        catalog.schema_json("clickstream_event.v3")


def test_enriched_event_schema_is_self_contained():
    raw = json.loads((catalog.AVRO_DIR / catalog.CONTRACTS["enriched_event"]).read_text())
    with pytest.raises(fastavro.schema.UnknownType):
        fastavro.parse_schema(raw, named_schemas={})  # the file alone only references ClickEvent

    text = catalog.canonical(catalog.schema_json("enriched_event"))
    event_type = {f["name"]: f for f in json.loads(text)["fields"]}["event"]["type"]
    assert isinstance(event_type, dict)
    assert (event_type["namespace"], event_type["name"]) == ("clickstream.events", "ClickEvent")
    assert event_type == catalog.schema_json("clickstream_event")  # the current version, referrer included
    assert '"clickstream.events.ClickEvent"' not in text
    named: dict[str, Any] = {}
    fastavro.parse_schema(json.loads(text), named_schemas=named)
    assert {"clickstream.events.ClickEvent", "clickstream.events.EnrichedEvent"} <= set(named)


# --- fastavro resolution between v1 and v2 -----------------------------------------------------


def test_v1_bytes_read_with_v2_reader():
    v1, v2 = (
        fastavro.parse_schema(catalog.schema_json("clickstream_event.v1")),
        fastavro.parse_schema(catalog.schema_json("clickstream_event.v2")),
    )
    decoded = _read(_write(v1, _v1_dict(V2_EVENT)), v1, v2)
    assert "referrer" in decoded and decoded["referrer"] is None
    assert from_avro(ClickEvent, decoded) == V1_EVENT


def test_v2_bytes_read_with_v1_reader():
    v1, v2 = (
        fastavro.parse_schema(catalog.schema_json("clickstream_event.v1")),
        fastavro.parse_schema(catalog.schema_json("clickstream_event.v2")),
    )
    decoded = _read(_write(v2, to_avro(V2_EVENT)), v2, v1)
    assert "referrer" not in decoded
    assert from_avro(ClickEvent, decoded) == V1_EVENT


# --- the same through the Confluent serde and a registry ---------------------------------------


def _producer(registry: InMemoryRegistry, schema: dict[str, Any]) -> ConfluentAvroSerde:
    return ConfluentAvroSerde(registry, schema, SUBJECT)


def _pipeline_reader(registry: InMemoryRegistry) -> ConfluentAvroSerde:
    return ConfluentAvroSerde(registry, catalog.schema_json("clickstream_event"))


def test_pipeline_reads_a_topic_with_v1_and_v2_writers():
    registry = InMemoryRegistry()
    v1_producer = _producer(registry, catalog.schema_json("clickstream_event.v1"))
    v2_producer = _producer(registry, catalog.schema_json("clickstream_event.v2"))
    frames = [v1_producer.encode(_v1_dict(V2_EVENT)), v2_producer.encode(to_avro(V2_EVENT))] * 2
    assert v1_producer.schema_id() != v2_producer.schema_id()
    assert registry.schema_by_id(v1_producer.schema_id()) == catalog.canonical(
        catalog.schema_json("clickstream_event.v1")
    )

    reader = _pipeline_reader(registry)
    assert [from_avro(ClickEvent, reader.decode(f)) for f in frames] == [V1_EVENT, V2_EVENT] * 2


def test_v1_consumer_reads_v2_frames():
    registry = InMemoryRegistry()
    frame = _producer(registry, catalog.schema_json("clickstream_event.v2")).encode(to_avro(V2_EVENT))
    old_consumer = ConfluentAvroSerde(registry, catalog.schema_json("clickstream_event.v1"))
    decoded = old_consumer.decode(frame)
    assert "referrer" not in decoded
    assert from_avro(ClickEvent, decoded) == V1_EVENT


def test_int_to_long_promotion_is_compatible():
    def narrow(fields, _schema):
        fields["amount_minor"]["type"] = ["null", "int"]

    registry = InMemoryRegistry()
    frame = _producer(registry, _variant("clickstream_event.v1", narrow)).encode(_v1_dict(V2_EVENT))
    assert from_avro(ClickEvent, _pipeline_reader(registry).decode(frame)) == V1_EVENT


def test_unknown_device_falls_back_to_the_enum_default():
    def add_tv(fields, _schema):
        fields["device"]["type"]["symbols"].append("smart_tv")

    registry = InMemoryRegistry()
    producer = _producer(registry, _variant("clickstream_event.v2", add_tv))
    frame = producer.encode(to_avro(V2_EVENT._replace(device="smart_tv")))
    assert _pipeline_reader(registry).decode(frame)["device"] == "other"


def _user_id_as_int(fields, _schema):
    fields["user_id"]["type"] = "int"


def _add_refund(fields, _schema):
    fields["event_type"]["type"]["symbols"].append("refund")


@pytest.mark.parametrize(
    ("edit", "record"),
    [
        (_user_id_as_int, {**to_avro(V2_EVENT), "user_id": 42}),
        (_add_refund, {**to_avro(V2_EVENT), "event_type": "refund"}),
    ],
    ids=["user_id_as_int", "unknown_event_type_without_default"],
)
def test_incompatible_writer_fails_with_schema_resolution_error(edit, record, request):
    registry = InMemoryRegistry()
    frame = _producer(registry, _variant("clickstream_event.v2", edit)).encode(record)
    with pytest.raises(SchemaResolutionError) as info:
        _pipeline_reader(registry).decode(frame)
    enum = "unknown_event_type" in request.node.callspec.id
    assert info.value.code == ("unknown_enum_symbol" if enum else "schema_resolution_failed")


def test_reader_field_without_default_fails_with_schema_resolution_error():
    def add_required(fields, schema):
        schema["fields"].append({"name": "tenant_id", "type": "string"})

    registry = InMemoryRegistry()
    frame = _producer(registry, catalog.schema_json("clickstream_event.v2")).encode(to_avro(V2_EVENT))
    strict_reader = ConfluentAvroSerde(registry, _variant("clickstream_event.v2", add_required))
    with pytest.raises(SchemaResolutionError, match="tenant_id") as info:
        strict_reader.decode(frame)
    assert info.value.code == "schema_resolution_failed"


def test_v1_writer_cannot_satisfy_a_reader_that_requires_referrer():
    def require_referrer(fields, _schema):
        fields["referrer"]["type"] = "string"
        del fields["referrer"]["default"]

    registry = InMemoryRegistry()
    frame = _producer(registry, catalog.schema_json("clickstream_event.v1")).encode(_v1_dict(V2_EVENT))
    with pytest.raises(SchemaResolutionError) as info:
        ConfluentAvroSerde(registry, _variant("clickstream_event.v2", require_referrer)).decode(frame)
    assert info.value.code == "schema_resolution_failed"
