"""Shared builders for unit tests: realistic events, a registry and the offline DirectRunner options."""

import time

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from schemas.catalog import schema_json
from schemas.records import ClickEvent, KafkaRecord, to_avro
from schemas.registry import InMemoryRegistry
from schemas.serde import ConfluentAvroSerde

RAW_TOPIC = "clickstream.events.raw"


def streaming_options() -> PipelineOptions:
    """BundleBasedDirectRunner by name: the default DirectRunner tries to download Prism."""
    return PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])


def batch_options() -> PipelineOptions:
    return PipelineOptions(["--runner=BundleBasedDirectRunner"])


def make_event(**overrides) -> ClickEvent:
    fields = dict(
        event_id="e-1",
        event_type="purchase",
        user_id="u00001",
        session_hint=None,
        product_id="p00001",
        amount_minor=1999,
        currency="EUR",
        event_time=int(time.time() * 1000) - 60_000,
        device="mobile",
        country="DE",
        user_agent="Mozilla/5.0 (mobile)",
        referrer=None,
        properties={"page": "/purchase"},
    )
    fields.update(overrides)
    return ClickEvent(**fields)


@pytest.fixture
def registry() -> InMemoryRegistry:
    return InMemoryRegistry()


@pytest.fixture
def raw_writer(registry) -> ConfluentAvroSerde:
    """Frames events as a v2 producer does."""
    return ConfluentAvroSerde(registry, schema_json("clickstream_event.v2"), f"{RAW_TOPIC}-value")


def kafka_record(value: bytes, offset: int = 0, key: bytes | None = b"u00001") -> KafkaRecord:
    return KafkaRecord(key, value, RAW_TOPIC, 0, offset, int(time.time() * 1000))


def frame(writer: ConfluentAvroSerde, event: ClickEvent) -> bytes:
    return writer.encode(to_avro(event))
