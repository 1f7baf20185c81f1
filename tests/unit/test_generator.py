from collections import Counter

from ingestion.generator import KINDS, GeneratorConfig, generate, reference_data
from schemas.catalog import schema_json
from schemas.registry import InMemoryRegistry
from schemas.serde import ConfluentAvroSerde, SerdeError


def test_same_seed_same_records():
    config = GeneratorConfig(events=300)
    first = generate(config, InMemoryRegistry())
    assert first == generate(config, InMemoryRegistry())
    assert first != generate(GeneratorConfig(events=300, seed=8), InMemoryRegistry())


def test_records_are_in_arrival_order_and_each_kind_behaves_as_labelled():
    registry = InMemoryRegistry()
    config = GeneratorConfig(events=2000)
    records = generate(config, registry)
    reader = ConfluentAvroSerde(registry, schema_json("clickstream_event"))
    assert [r.arrival_ms for r in records] == sorted(r.arrival_ms for r in records)
    kinds = Counter(r.kind for r in records)
    assert set(kinds) == set(KINDS)
    sent_before = set()  # event ids of earlier records: a duplicate resends one of them
    for record in records:
        lag_ms = record.arrival_ms - record.event.event_time
        if record.kind == "malformed":
            try:
                reader.decode(record.value)
            except SerdeError:
                continue
            raise AssertionError("a malformed record decoded")
        assert reader.decode(record.value)["event_id"] == record.event.event_id
        if record.kind != "duplicate":
            sent_before.add(record.event.event_id)
        if record.kind == "too_late":
            assert lag_ms > config.too_late_after_seconds * 1000
        elif record.kind == "duplicate":
            assert lag_ms <= 1500 + 5000 and record.event.event_id in sent_before
        elif record.kind == "late":
            assert 30_000 <= lag_ms <= config.max_skew_seconds * 1000
        else:
            assert lag_ms <= 1500


def test_reference_data_covers_most_but_not_all_keys():
    config = GeneratorConfig()
    users, products = reference_data(config)
    assert 0.9 * config.users < len(users) < config.users
    assert 0.85 * config.products < len(products) < config.products
