"""Shared builders for unit tests: realistic events, a registry and the offline DirectRunner options."""

import time

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from schemas import endpoints
from schemas.catalog import schema_json
from schemas.records import ClickEvent, KafkaRecord, to_avro
from schemas.registry import InMemoryRegistry
from schemas.serde import ConfluentAvroSerde

RAW_TOPIC = endpoints.RAW_TOPIC


def streaming_options() -> PipelineOptions:
    """BundleBasedDirectRunner by name: the default DirectRunner tries to download Prism."""
    return PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"])


def batch_options() -> PipelineOptions:
    return PipelineOptions(["--runner=BundleBasedDirectRunner"])


#: A realistic purchase with every optional field set (serde and coder tests).
CLICK = ClickEvent(
    event_id="4f9c2a1e-8b7d-4c3e-9a6f-2d1b0c9e8f7a",
    event_type="purchase",
    user_id="u-000042",
    session_hint="s-9f8e7d",
    product_id="sku-1001",
    amount_minor=12999,
    currency="EUR",
    event_time=1_717_236_000_123,
    device="mobile",
    country="DE",
    user_agent="Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    referrer="https://www.google.com/",
    properties={"page": "/checkout/confirm", "campaign": "summer-sale", "ab_bucket": "B"},
)


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
    return KafkaRecord(key, value, RAW_TOPIC, 0, offset)


def frame(writer: ConfluentAvroSerde, event: ClickEvent) -> bytes:
    return writer.encode(to_avro(event))
