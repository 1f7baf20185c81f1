"""EnrichEvents: joined records, preserved event time, bounded degrade on slow/failing stores, caching.

Pipelines run on TestStream + BundleBasedDirectRunner --streaming; every lookup of a bundle completes
inside that bundle, so the tests need no processing-time steps.
"""

import asyncio
import collections
import pickle
import threading
import time
import uuid

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import Timestamp
from pydantic import ValidationError

from schemas.records import ClickEvent, EnrichedEvent, Product, Provenance, TrackedEnriched, TrackedEvent, UserProfile
from tests.unit.conftest import batch_options, make_event, streaming_options
from tests.unit.lookup_fakes import InMemoryLookupHandler
from transforms.enrich import (
    LOOKUP_COUNTS,
    Enricher,
    EnrichEvents,
    EnrichmentConfig,
    EnrichmentOutcome,
    LookupCache,
    LookupHandler,
)

T0 = 1_717_236_000_000  # a minute boundary, so FixedWindows(60 s) are predictable

USERS = {
    "u1": UserProfile("u1", "vip", "gold", "DE"),
    "u2": UserProfile("u2", "new", "none", "FR"),
}
PRODUCTS = {
    "p1": Product("p1", "shoes", "acme", 4999, "EUR"),
    "p2": Product("p2", "books", "inkwell", 1299, "EUR"),
}

FAST = EnrichmentConfig(
    lookup_timeout_seconds=0.2,
    max_retries=2,
    initial_backoff_seconds=0.01,
    max_backoff_seconds=0.05,
)

_CALLS: collections.Counter = collections.Counter()
_CALLS_LOCK = threading.Lock()


class _CountingHandler(InMemoryLookupHandler):
    """Counts calls in this module's table: DoFns are pickled, but the DirectRunner runs them in this process
    and the class is pickled by reference, so every copy increments the same table."""

    def __init__(self, token: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._token = token

    async def lookup(self, key: str):
        with _CALLS_LOCK:
            _CALLS[(self._token, key)] += 1
        return await super().lookup(key)


def _calls(handler: _CountingHandler, key: str) -> int:
    with _CALLS_LOCK:
        return _CALLS[(handler._token, key)]


def _users(**kwargs) -> _CountingHandler:
    return _CountingHandler(uuid.uuid4().hex, "users", USERS, **kwargs)


def _products(**kwargs) -> _CountingHandler:
    return _CountingHandler(uuid.uuid4().hex, "products", PRODUCTS, **kwargs)


def _event(event_id: str, user_id: str, product_id: str | None, offset_s: int) -> ClickEvent:
    return make_event(
        event_id=event_id,
        user_id=user_id,
        product_id=product_id,
        event_type="purchase" if product_id else "page_view",
        event_time=T0 + offset_s * 1000,
    )


def _stream(*batches: list[ClickEvent]) -> TestStream:
    """Each batch at its event time."""
    stream = TestStream(coder=beam.coders.registry.get_coder(ClickEvent)).with_output_types(ClickEvent)
    stream = stream.advance_watermark_to(Timestamp(micros=T0 * 1000))
    for batch in batches:
        stream = stream.add_elements([TimestampedValue(e, Timestamp(micros=e.event_time * 1000)) for e in batch])
    return stream.advance_watermark_to_infinity()


def _tracked(event: ClickEvent) -> TrackedEvent:
    """The event as validation hands it on; its offset is its event time, to check the provenance rides along."""
    return TrackedEvent(event, Provenance("raw", 0, event.event_time, event.event_time, 0, 1))


def _untracked(tracked: TrackedEnriched) -> EnrichedEvent:
    assert tracked.provenance == _tracked(tracked.record.event).provenance, tracked
    return tracked.record


def _enrich(p: beam.Pipeline, events, config=FAST, users=None, products=None, later=()) -> beam.PCollection:
    return (
        p
        | "Events" >> _stream(events, *([list(later)] if later else []))
        | "Track" >> beam.Map(_tracked)
        | "Enrich" >> EnrichEvents(config, users or _users(), products or _products())
        | "Untrack" >> beam.Map(_untracked)
    )


def _summary(enriched: beam.PCollection) -> beam.PCollection:
    return enriched | "Summary" >> beam.Map(
        lambda e: (e.event.event_id, e.enrichment_status, tuple(e.enrichment_errors))
    )


def test_all_found_is_enriched_and_keeps_event_time():
    events = [_event("e1", "u1", "p1", 5), _event("e2", "u2", "p2", 30), _event("e3", "u1", None, 75)]
    with TestPipeline(options=streaming_options()) as p:
        enriched = _enrich(p, events)
        assert_that(
            enriched,
            equal_to(
                [
                    EnrichedEvent(events[0], USERS["u1"], PRODUCTS["p1"], "enriched", []),
                    EnrichedEvent(events[1], USERS["u2"], PRODUCTS["p2"], "enriched", []),
                    EnrichedEvent(events[2], USERS["u1"], None, "enriched", []),
                ]
            ),
            label="Joined",
        )
        timestamps = enriched | "Timestamps" >> beam.Map(
            lambda e, ts=beam.DoFn.TimestampParam: (e.event.event_id, ts.micros // 1000)
        )
        assert_that(timestamps, equal_to([("e1", T0 + 5000), ("e2", T0 + 30000), ("e3", T0 + 75000)]), label="Ts")
        per_window = (
            enriched
            | "Window" >> beam.WindowInto(FixedWindows(60))
            | "One" >> beam.Map(lambda e: ("all", 1))
            | "Count" >> beam.CombinePerKey(sum)
        )
        start = T0 / 1000
        assert_that(
            per_window,
            equal_to_per_window(
                {
                    IntervalWindow(start, start + 60): [("all", 2)],
                    IntervalWindow(start + 60, start + 120): [("all", 1)],
                }
            ),
            reify_windows=True,
            label="PerWindow",
        )


def test_event_without_product_does_no_product_lookup():
    users, products = _users(), _products()
    with TestPipeline(options=streaming_options()) as p:
        enriched = _enrich(p, [_event("e1", "u2", None, 1)], users=users, products=products)
        assert_that(_summary(enriched), equal_to([("e1", "enriched", ())]))
    assert _calls(users, "u2") == 1  # the counter works across pickling ...
    with _CALLS_LOCK:
        assert not [k for k in _CALLS if k[0] == products._token]  # ... and products was never asked


def test_not_found_degrades_with_reason():
    events = [
        _event("e1", "u1", "p9", 1),  # product missing -> partial
        _event("e2", "u9", None, 2),  # the only lookup missing -> not_enriched
        _event("e3", "u9", "p9", 3),  # both missing -> not_enriched
        _event("e4", "u9", "p1", 4),  # user missing -> partial
    ]
    with TestPipeline(options=streaming_options()) as p:
        assert_that(
            _summary(_enrich(p, events)),
            equal_to(
                [
                    ("e1", "partial", ("product p9: not found",)),
                    ("e2", "not_enriched", ("user u9: not found",)),
                    ("e3", "not_enriched", ("user u9: not found", "product p9: not found")),
                    ("e4", "partial", ("user u9: not found",)),
                ]
            ),
        )


def test_slow_store_times_out_and_degrades_quickly():
    config = FAST.model_copy(update={"max_retries": 1})
    users = _users(slow_keys=frozenset({"u2"}), slow_latency_seconds=60.0)
    started = time.monotonic()
    with TestPipeline(options=streaming_options()) as p:
        assert_that(
            _summary(_enrich(p, [_event("e1", "u2", "p1", 1), _event("e2", "u1", "p1", 2)], config, users=users)),
            equal_to(
                [
                    ("e1", "partial", ("user u2: timed out after 0.2s (2 attempts)",)),
                    ("e2", "enriched", ()),
                ]
            ),
        )
    assert time.monotonic() - started < 15, "a 60 s store must cost about worst_case_lookup_seconds, not 60 s"
    assert _calls(users, "u2") == 2


def test_transient_failures_recover_within_retries():
    users, products = _users(transient_failures=2), _products(transient_failures=1)
    with TestPipeline(options=streaming_options()) as p:
        assert_that(
            _summary(_enrich(p, [_event("e1", "u1", "p1", 1)], users=users, products=products)),
            equal_to([("e1", "enriched", ())]),
        )
    assert (_calls(users, "u1"), _calls(products, "p1")) == (3, 2)


def test_permanent_failure_degrades_after_max_retries():
    products = _products(failing_keys=frozenset({"p2"}), failure_message="boom")
    with TestPipeline(options=streaming_options()) as p:
        assert_that(
            _summary(_enrich(p, [_event("e1", "u1", "p2", 1), _event("e2", "u2", "p1", 2)], products=products)),
            equal_to(
                [
                    ("e1", "partial", ("product p2: failed: RuntimeError('boom') (3 attempts)",)),
                    ("e2", "enriched", ()),
                ]
            ),
        )
    assert _calls(products, "p2") == FAST.max_retries + 1


def test_same_user_again_is_served_from_cache():
    users = _users()
    first, later = [_event("e1", "u1", "p1", 1)], [_event("e2", "u1", "p2", 2), _event("e3", "u1", "p1", 3)]
    with TestPipeline(options=streaming_options()) as p:
        assert_that(
            _summary(_enrich(p, first, users=users, later=later)),
            equal_to([("e1", "enriched", ()), ("e2", "enriched", ()), ("e3", "enriched", ())]),
        )
    assert _calls(users, "u1") == 1


def test_duplicate_events_in_flight_together_all_come_out():
    # Duplicates are for the reconciliation to count, not for enrichment to hide.
    twin = _event("e1", "u1", "p1", 1)
    events = [twin, twin, _event("e1", "u1", "p2", 1), _event("e1", "u2", "p2", 1)]
    with TestPipeline(options=streaming_options()) as p:
        enriched = _enrich(p, events, users=_users(latency_seconds=0.05))
        assert_that(
            enriched | beam.Map(lambda e: (e.event.user_id, e.event.product_id, e.enrichment_status)),
            equal_to(
                [("u1", "p1", "enriched"), ("u1", "p1", "enriched"), ("u1", "p2", "enriched"), ("u2", "p2", "enriched")]
            ),
        )


def test_wrong_record_type_from_handler_degrades():
    users = InMemoryLookupHandler("users", {"u1": {"user_id": "u1"}})
    with TestPipeline(options=streaming_options()) as p:
        assert_that(
            _summary(_enrich(p, [_event("e1", "u1", "p1", 1)], users=users)),
            equal_to(
                [
                    (
                        "e1",
                        "partial",
                        ("user u1: failed: handler 'users' returned dict, expected UserProfile (1 attempt)",),
                    )
                ]
            ),
        )


# --- the async core, without a pipeline: exact counts, cache and coalescing ----------------------------------


def _run_enrich(enricher: Enricher, *events: ClickEvent) -> list[EnrichmentOutcome]:
    async def run():
        return [await enricher.enrich(e) for e in events]

    return asyncio.run(run())


def test_counts_second_lookup_served_from_cache():
    users, products = _users(), _products()
    enricher = Enricher(FAST, users, products, Shared())
    first, second = _run_enrich(enricher, _event("e1", "u1", "p9", 1), _event("e2", "u1", "p9", 2))
    assert first.counts == {**dict.fromkeys(LOOKUP_COUNTS, 0), "lookups": 2, "store_calls": 2, "not_found": 1}
    assert second.counts == {**dict.fromkeys(LOOKUP_COUNTS, 0), "lookups": 2, "cache_hits": 2, "not_found": 1}
    assert second.enriched.enrichment_errors == ["product p9: not found"]
    assert (_calls(users, "u1"), _calls(products, "p9")) == (1, 1)


def test_cache_is_shared_per_transform_not_across_transforms():
    users = _users()
    shared = Shared()  # what EnrichEvents pickles into each of its DoFn instances
    first = Enricher(FAST, users, _products(), shared)  # alive, as a worker's DoFn instance is
    _run_enrich(first, _event("e1", "u1", None, 1))
    copy = pickle.loads(pickle.dumps(shared))
    again = _run_enrich(
        Enricher(FAST, pickle.loads(pickle.dumps(users)), _products(), copy), _event("e2", "u1", None, 2)
    )
    other = _run_enrich(Enricher(FAST, users, _products(), Shared()), _event("e3", "u1", None, 3))
    assert again[0].counts["cache_hits"] == 1
    assert other[0].counts["cache_hits"] == 0
    assert _calls(users, "u1") == 2


def test_concurrent_lookups_of_one_key_are_coalesced():
    users = _users(latency_seconds=0.05)
    enricher = Enricher(FAST, users, _products(), Shared())

    async def run():
        return await asyncio.gather(*(enricher.enrich(_event(f"e{i}", "u1", None, i)) for i in range(5)))

    outcomes = asyncio.run(run())
    assert [o.enriched.enrichment_status for o in outcomes] == ["enriched"] * 5
    assert sum(o.counts["coalesced"] for o in outcomes) == 4
    assert _calls(users, "u1") == 1


def test_follower_looks_up_itself_when_the_leader_is_cancelled():
    users = _users(latency_seconds=0.05)
    enricher = Enricher(FAST, users, _products(), Shared())

    async def run():
        leader = asyncio.ensure_future(enricher.enrich(_event("e1", "u1", None, 1)))
        await asyncio.sleep(0.01)
        follower = asyncio.ensure_future(enricher.enrich(_event("e2", "u1", None, 2)))
        await asyncio.sleep(0.01)
        leader.cancel()
        return await follower

    outcome = asyncio.run(run())
    assert outcome.enriched.enrichment_status == "enriched"
    assert _calls(users, "u1") == 2


def test_failures_are_not_cached():
    config = FAST.model_copy(update={"max_retries": 0})
    users = _users(transient_failures=1)
    enricher = Enricher(config, users, _products(), Shared())
    first, second = _run_enrich(enricher, _event("e1", "u1", None, 1), _event("e2", "u1", None, 2))
    assert first.enriched.enrichment_errors == ["user u1: failed: RuntimeError('injected failure') (1 attempt)"]
    assert first.counts["failures"] == 1
    assert second.enriched.enrichment_status == "enriched"


def test_ttl_cache_expires_not_found_sooner_and_evicts_lru():
    now = [0.0]
    cache = LookupCache(max_entries=2, ttl_seconds=10, not_found_ttl_seconds=1, clock=lambda: now[0])
    cache.put("found", "record")
    cache.put("missing", None)
    assert (cache.get("found"), cache.get("missing")) == ("record", None)
    now[0] = 1.5
    assert cache.get("missing") is not None  # expired: _MISS, not a cached None
    assert cache.get("found") == "record"
    cache.put("a", "A")
    cache.put("b", "B")  # evicts the least recently used
    assert len(cache) == 2 and cache.get("b") == "B"
    now[0] = 20
    assert cache.get("a") is not None and cache.get("a") != "A"


def test_in_memory_handler_counts_transient_failures_per_unpickled_copy():
    handler = InMemoryLookupHandler("users", USERS, transient_failures=1)

    async def attempt(h, key):
        try:
            return await h.lookup(key)
        except RuntimeError:
            return "failed"

    assert asyncio.run(attempt(handler, "u1")) == "failed"
    assert asyncio.run(attempt(handler, "u1")) == USERS["u1"]
    copy = pickle.loads(pickle.dumps(handler))  # a worker's copy starts counting afresh
    assert asyncio.run(attempt(copy, "u1")) == "failed"
    assert asyncio.run(attempt(copy, "u1")) == USERS["u1"]
    assert isinstance(handler, LookupHandler)


def test_lookup_counts_become_stage_metrics():
    """Counts leave the event loop with each outcome and are recorded on the bundle thread, where Beam sees them."""
    handler = InMemoryLookupHandler("user", USERS, transient_failures=1)
    events = [_event("e1", "u1", None, 1), _event("e2", "u1", None, 2), _event("e3", "nobody", None, 3)]
    p = TestPipeline(options=batch_options())
    out = p | beam.Create(events) | beam.Map(_tracked) | EnrichEvents(FAST, handler, _products()) | beam.Map(_untracked)
    assert_that(out | beam.Map(lambda e: e.enrichment_status), equal_to(["enriched", "enriched", "not_enriched"]))
    result = p.run()
    result.wait_until_finish()
    got = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
    assert got["enrich_lookups"] == 3
    assert got["enrich_not_found"] == 1
    assert got["enrich_status_enriched"] == 2
    assert got["enrich_status_not_enriched"] == 1
    assert got["enrich_retries"] >= 1  # the first attempt per key fails once
    assert "enrich_failures" not in got  # zero counts are not reported


def test_config_validation_names_the_problem():
    with pytest.raises(ValidationError, match="max_backoff_seconds"):
        EnrichmentConfig(initial_backoff_seconds=2, max_backoff_seconds=1)
    with pytest.raises(ValidationError, match="cache_not_found_ttl_seconds"):
        EnrichmentConfig(cache_ttl_seconds=10, cache_not_found_ttl_seconds=20)
    with pytest.raises(ValidationError, match="extra"):
        EnrichmentConfig(typo=1)
    with pytest.raises(ValidationError):
        FAST.max_retries = 5  # frozen
    assert FAST.worst_case_lookup_seconds == pytest.approx(3 * 0.2 + 0.01 + 0.02)


def test_enrich_rejects_a_handler_without_lookup():
    with pytest.raises(TypeError, match="users must be a LookupHandler"):
        EnrichEvents(FAST, object(), _products())
