"""The project's schema registry, proved with confluent-kafka's own client and Avro serializers.

Every test talks to the real registry process (``python -m schema_registry``) backed by the real broker's
compacted ``_schemas`` topic; subjects carry a random suffix so runs never depend on each other.
"""

import copy
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from runners.stack.kafka import Kafka, ensure_topics
from runners.stack.registry import SchemaRegistry
from schemas.registry import ConfluentRegistry, SchemaNotFoundError
from schemas.serde import ConfluentAvroSerde

pytestmark = pytest.mark.integration

AVRO_DIR = Path(__file__).resolve().parents[2] / "schemas" / "avro"
V1 = (AVRO_DIR / "clickstream_event.v1.avsc").read_text()
V2 = (AVRO_DIR / "clickstream_event.v2.avsc").read_text()


def _incompatible() -> str:
    """v2 plus a required field with no default: new readers cannot read v1/v2 data (not BACKWARD)."""
    schema = json.loads(V2)
    schema["fields"].append({"name": "tenant_id", "type": "string"})
    return json.dumps(schema)


def _subject(stem: str) -> str:
    return f"it-{stem}-{uuid.uuid4().hex[:8]}-value"


def _client(registry: SchemaRegistry) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry.url, "timeout": 10})


def _event() -> dict:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": "purchase",
        "user_id": "user-42",
        "session_hint": None,
        "product_id": "sku-7",
        "amount_minor": 129_99,
        "currency": "EUR",
        "event_time": datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC),
        "device": "mobile",
        "country": "DE",
        "user_agent": "Mozilla/5.0",
        "properties": {"page": "/checkout", "campaign": "spring"},
    }


def test_avro_serializer_round_trip_through_kafka(kafka_broker: Kafka, schema_registry_service: SchemaRegistry) -> None:
    client = _client(schema_registry_service)
    topic = f"it.events.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker.bootstrap, [topic], partitions=1)
    serializer = AvroSerializer(client, V1, conf={"auto.register.schemas": True})
    event = _event()

    payload = serializer(event, SerializationContext(topic, MessageField.VALUE))
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "acks": "all"})
    producer.produce(topic, key=event["user_id"].encode(), value=payload)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": f"it-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        message = None
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is not None:
                break
    finally:
        consumer.close()
    assert message is not None and message.error() is None
    data = message.value()

    registered = client.lookup_schema(f"{topic}-value", Schema(V1, "AVRO"))
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == registered.schema_id
    # a fresh client (no cache) so the deserializer fetches the writer schema by id over HTTP
    decoded = AvroDeserializer(_client(schema_registry_service))(data, SerializationContext(topic, MessageField.VALUE))
    assert decoded == event
    # and the project's own decoder, through the project's registry client, reads the same bytes
    serde = ConfluentAvroSerde(ConfluentRegistry(schema_registry_service.url), json.loads(V1))
    assert serde.decode(data) == event


def test_project_serde_registers_and_frames_with_the_registry_id(schema_registry_service: SchemaRegistry) -> None:
    subject = _subject("serde")
    serde = ConfluentAvroSerde(ConfluentRegistry(schema_registry_service.url), json.loads(V2), subject=subject)
    event = {**_event(), "referrer": "https://example.org/"}

    data = serde.encode(event)

    latest = _client(schema_registry_service).get_latest_version(subject)
    assert latest.version == 1 and int.from_bytes(data[1:5], "big") == latest.schema_id
    assert AvroDeserializer(_client(schema_registry_service))(data, None) == event


def test_v1_then_v2_is_a_compatible_evolution(schema_registry_service: SchemaRegistry) -> None:
    client = _client(schema_registry_service)
    subject = _subject("evolve")

    id_v1 = client.register_schema(subject, Schema(V1, "AVRO"))
    assert client.test_compatibility(subject, Schema(V2, "AVRO")) is True
    id_v2 = client.register_schema(subject, Schema(V2, "AVRO"))

    assert id_v2 != id_v1
    assert client.get_versions(subject) == [1, 2]
    latest = client.get_latest_version(subject)
    assert (latest.version, latest.schema_id) == (2, id_v2)
    assert client.get_version(subject, 1).schema_id == id_v1
    assert client.register_schema(subject, Schema(V1, "AVRO")) == id_v1  # re-registering returns the same id
    assert client.get_versions(subject) == [1, 2]
    assert client.get_compatibility() == "BACKWARD"


def test_same_schema_has_one_id_across_subjects(schema_registry_service: SchemaRegistry) -> None:
    client = _client(schema_registry_service)
    first = client.register_schema(_subject("shared-a"), Schema(V1, "AVRO"))
    # whitespace and key order differ, the schema does not: Confluent gives it the same global id
    reordered = json.dumps(json.loads(V1), sort_keys=True, indent=1)
    second = client.register_schema(_subject("shared-b"), Schema(reordered, "AVRO"))
    assert first == second


def test_incompatible_change_is_rejected_with_409(schema_registry_service: SchemaRegistry) -> None:
    client = _client(schema_registry_service)
    subject = _subject("reject")
    client.register_schema(subject, Schema(V1, "AVRO"))
    client.register_schema(subject, Schema(V2, "AVRO"))

    assert client.test_compatibility(subject, Schema(_incompatible(), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as caught:
        client.register_schema(subject, Schema(_incompatible(), "AVRO"))

    assert caught.value.http_status_code == 409
    assert caught.value.error_code == 409
    assert "tenant_id" in caught.value.error_message
    assert client.get_versions(subject) == [1, 2]


def test_forward_and_full_levels_check_the_other_direction(schema_registry_service: SchemaRegistry) -> None:
    client = _client(schema_registry_service)
    subject = _subject("forward")
    client.register_schema(subject, Schema(V2, "AVRO"))
    dropped = copy.deepcopy(json.loads(V2))
    dropped["fields"] = [f for f in dropped["fields"] if f["name"] != "country"]  # a required field goes away
    client.set_compatibility(subject, "FORWARD")
    # BACKWARD would allow dropping a field; FORWARD does not: old readers need `country`
    assert client.test_compatibility(subject, Schema(json.dumps(dropped), "AVRO")) is False
    client.set_compatibility(subject, "BACKWARD")
    assert client.test_compatibility(subject, Schema(json.dumps(dropped), "AVRO")) is True
    client.set_compatibility(subject, "FULL")
    assert client.test_compatibility(subject, Schema(json.dumps(dropped), "AVRO")) is False


def test_subject_level_none_lets_an_incompatible_schema_through(schema_registry_service: SchemaRegistry) -> None:
    client = _client(schema_registry_service)
    subject, neighbour = _subject("none"), _subject("neighbour")
    for name in (subject, neighbour):
        client.register_schema(name, Schema(V2, "AVRO"))

    assert client.set_compatibility(subject, "NONE") == {"compatibility": "NONE"}
    new_id = client.register_schema(subject, Schema(_incompatible(), "AVRO"))

    assert client.get_latest_version(subject).schema_id == new_id
    assert client.get_versions(subject) == [1, 2]
    assert client.get_compatibility(subject) == "NONE"
    assert client.get_compatibility() == "BACKWARD"  # the global level is untouched
    with pytest.raises(SchemaRegistryError) as caught:  # ... and still applies to other subjects
        client.register_schema(neighbour, Schema(_incompatible(), "AVRO"))
    assert caught.value.error_code == 409


def test_unknown_id_is_404_40403(schema_registry_service: SchemaRegistry) -> None:
    with pytest.raises(SchemaRegistryError) as caught:
        _client(schema_registry_service).get_schema(987_654_321)
    assert (caught.value.http_status_code, caught.value.error_code) == (404, 40403)
    with pytest.raises(SchemaNotFoundError):
        ConfluentRegistry(schema_registry_service.url).schema_by_id(987_654_321)


def test_errors_and_deletes_follow_confluent(schema_registry_service: SchemaRegistry) -> None:
    url = schema_registry_service.url
    subject = _subject("errors")
    with httpx.Client(base_url=url, timeout=10) as http:
        bad = http.post(f"/subjects/{subject}/versions", json={"schema": '{"type": "recrod"}'})
        assert (bad.status_code, bad.json()["error_code"]) == (422, 42201)
        assert bad.headers["content-type"].startswith("application/vnd.schemaregistry.v1+json")
        bad_default = json.dumps(
            {"type": "record", "name": "R", "fields": [{"name": "n", "type": "int", "default": "x"}]}
        )
        assert http.post(f"/subjects/{subject}/versions", json={"schema": bad_default}).json()["error_code"] == 42201
        assert http.get(f"/subjects/{subject}/versions").json()["error_code"] == 40401
        assert http.put("/config", json={"compatibility": "SIDEWAYS"}).json()["error_code"] == 42203

        schema_id = http.post(f"/subjects/{subject}/versions", json={"schema": V1}).json()["id"]
        assert http.get(f"/subjects/{subject}/versions/7").json()["error_code"] == 40402
        assert http.get(f"/subjects/{subject}/versions/zero").json()["error_code"] == 42202
        found = http.post(f"/subjects/{subject}", json={"schema": V1}).json()
        assert (found["id"], found["version"], found["subject"]) == (schema_id, 1, subject)
        assert http.post(f"/subjects/{subject}", json={"schema": V2}).json()["error_code"] == 40403

        assert http.delete(f"/subjects/{subject}").json() == [1]  # soft delete
        assert subject not in http.get("/subjects").json()
        assert subject in http.get("/subjects", params={"deleted": "true"}).json()
        assert http.get(f"/schemas/ids/{schema_id}").status_code == 200  # ids of soft-deleted versions resolve
        assert http.delete(f"/subjects/{subject}").json()["error_code"] == 40404
        assert http.delete(f"/subjects/{subject}", params={"permanent": "true"}).json() == [1]
        assert subject not in http.get("/subjects", params={"deleted": "true"}).json()


def test_state_survives_a_registry_restart(kafka_broker: Kafka, schema_registry_service: SchemaRegistry) -> None:
    client = _client(schema_registry_service)
    subject = _subject("restart")
    id_v1 = client.register_schema(subject, Schema(V1, "AVRO"))
    id_v2 = client.register_schema(subject, Schema(V2, "AVRO"))
    client.set_compatibility(subject, "FULL_TRANSITIVE")
    pid = schema_registry_service.pid

    schema_registry_service.stop()
    assert schema_registry_service.pid is None and not schema_registry_service.health().ok
    schema_registry_service.start()
    assert schema_registry_service.pid not in (None, pid)

    fresh = _client(schema_registry_service)  # nothing cached
    assert fresh.get_versions(subject) == [1, 2]
    assert fresh.get_version(subject, 1).schema_id == id_v1
    assert fresh.get_latest_version(subject).schema_id == id_v2
    assert json.loads(fresh.get_schema(id_v2).schema_str)["fields"][-2]["name"] == "referrer"
    assert fresh.get_compatibility(subject) == "FULL_TRANSITIVE"
    assert fresh.register_schema(subject, Schema(V2, "AVRO")) == id_v2
    newer = fresh.register_schema(_subject("after-restart"), Schema(_incompatible(), "AVRO"))
    assert newer > id_v2  # ids keep counting; none is handed out twice

    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    [config_future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, "_schemas")]).values()
    assert config_future.result(timeout=10)["cleanup.policy"].value == "compact"
