"""The real lookup stores: seeded PostgreSQL + Redis read back by the handlers, and EnrichEvents on top of them
degrading (not failing, not hanging) when a store is slow or down.

Pipelines run on TestStream + BundleBasedDirectRunner --streaming; lookups complete within their bundle.
"""

import asyncio
import pickle
import re
import time

import apache_beam as beam
import psycopg
import pytest
import redis
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from pydantic import SecretStr

from ingestion.generator import GeneratorConfig, reference_data
from runners.stack.postgres import Postgres
from runners.stack.redis import Redis
from runners.stack.seed import seed_products, seed_user_profiles
from schemas.records import ClickEvent, EnrichedEvent, TrackedEvent
from tests.integration.conftest import STORES
from tests.unit.conftest import make_event, streaming_options
from transforms.enrich import EnrichEvents, EnrichmentConfig, LookupHandler
from transforms.lookups import PostgresUserLookup, RedisProductLookup, StoreError

pytestmark = pytest.mark.integration

USERS, PRODUCTS = reference_data(GeneratorConfig())
U1, U2 = sorted(USERS)[:2]
P1, P2 = sorted(PRODUCTS)[:2]
NO_USER = next(f"u{i:05d}" for i in range(10_000) if f"u{i:05d}" not in USERS)  # a generated id without profile
NO_PRODUCT = next(f"p{i:05d}" for i in range(10_000) if f"p{i:05d}" not in PRODUCTS)

# Happy path: a generous deadline (the first call of a handler also connects); degraded paths: a short one.
HEALTHY = EnrichmentConfig(lookup_timeout_seconds=2.0, initial_backoff_seconds=0.01, max_backoff_seconds=0.05)
STRICT = HEALTHY.model_copy(update={"lookup_timeout_seconds": 0.3})


def _event(event_id: str, user_id: str, product_id: str | None) -> ClickEvent:
    return make_event(event_id=event_id, user_id=user_id, product_id=product_id)


def _stream(events: list[ClickEvent]) -> TestStream:
    stream = TestStream(coder=beam.coders.registry.get_coder(ClickEvent)).with_output_types(ClickEvent)
    stream = stream.add_elements([TimestampedValue(e, Timestamp(micros=e.event_time * 1000)) for e in events])
    return stream.advance_watermark_to_infinity()


def _summary(enriched: beam.PCollection) -> beam.PCollection:
    return enriched | "Summary" >> beam.Map(
        lambda e: (e.event.event_id, e.enrichment_status, tuple(e.enrichment_errors))
    )


class _Matches:
    """assert_that matcher: (event_id, status, reasons) per event, each reason matched against a regex."""

    def __init__(self, expected: list[tuple[str, str, tuple[str, ...]]]) -> None:
        self._expected = {event_id: (status, patterns) for event_id, status, patterns in expected}

    def __call__(self, actual: list[tuple[str, str, tuple[str, ...]]]) -> None:
        got = {event_id: (status, reasons) for event_id, status, reasons in actual}
        ok = len(actual) == len(got) and got.keys() == self._expected.keys()
        for event_id, (status, reasons) in got.items() if ok else ():
            want_status, patterns = self._expected[event_id]
            ok = ok and status == want_status and len(reasons) == len(patterns)
            ok = ok and all(re.fullmatch(pattern, reason) for pattern, reason in zip(patterns, reasons, strict=False))
        if not ok:
            raise BeamAssertException(f"got {sorted(actual)}, expected to match {sorted(self._expected.items())}")


def _run(
    stores: tuple[Postgres, Redis], events: list[ClickEvent], config: EnrichmentConfig, expected: list, summary=True
) -> float:
    """Run EnrichEvents with the real handlers over ``events``; returns the wall time of the pipeline."""
    users, products = PostgresUserLookup(SecretStr(stores[0].dsn)), RedisProductLookup(stores[1].url)
    started = time.monotonic()
    with TestPipeline(options=streaming_options()) as p:
        enriched = (
            p
            | "Events" >> _stream(events)
            | "Track" >> beam.Map(lambda e: TrackedEvent(e, None))
            | "Enrich" >> EnrichEvents(config, users, products)
            | "Untrack" >> beam.Map(lambda t: t.record)
        )
        assert_that(*((_summary(enriched), _Matches(expected)) if summary else (enriched, equal_to(expected))))
    return time.monotonic() - started


# --- the stores and the handlers -------------------------------------------------------------------------


def test_stores_are_seeded_idempotently(postgres_store: Postgres, redis_store: Redis):
    # Seeding again (the components seeded on start) upserts: the counts stay.
    assert seed_user_profiles(postgres_store.dsn, GeneratorConfig()) == len(USERS)
    assert seed_products(redis_store.url, GeneratorConfig()) == len(PRODUCTS)
    with psycopg.connect(postgres_store.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM user_profiles").fetchone()[0] == len(USERS)
    client = redis.Redis.from_url(redis_store.url, decode_responses=True)
    try:
        assert len(list(client.scan_iter("product:*", count=1000))) == len(PRODUCTS)
        assert client.hgetall(f"product:{P1}")["price_minor"] == str(PRODUCTS[P1].price_minor)
    finally:
        client.close()
    assert postgres_store.health().ok and redis_store.health().ok
    assert f"{len(USERS)} user profiles" in postgres_store.health().detail


def test_handlers_return_seeded_records_and_none_for_unknown_keys(postgres_store: Postgres, redis_store: Redis):
    users = PostgresUserLookup(SecretStr(postgres_store.dsn), max_connections=2)
    products = RedisProductLookup(redis_store.url, max_connections=2)
    assert isinstance(users, LookupHandler) and isinstance(products, LookupHandler)
    assert (users.name, products.name) == ("user", "product")

    async def look_up_all(u: PostgresUserLookup, p: RedisProductLookup) -> tuple[list, list]:
        try:  # concurrently: more lookups than connections, so they queue for the pool
            return await asyncio.gather(*(u.lookup(k) for k in [*USERS, NO_USER])), await asyncio.gather(
                *(p.lookup(k) for k in [*PRODUCTS, NO_PRODUCT])
            )
        finally:
            await u.aclose()
            await p.aclose()

    found_users, found_products = asyncio.run(look_up_all(users, products))
    assert found_users == [*USERS.values(), None]
    assert found_products == [*PRODUCTS.values(), None]
    # A pickled copy (as shipped to a worker) connects afresh on another event loop.
    copies = pickle.loads(pickle.dumps(users)), pickle.loads(pickle.dumps(products))
    assert asyncio.run(look_up_all(*copies)) == (found_users, found_products)


def test_handlers_raise_when_the_store_is_unreachable():
    users = PostgresUserLookup(
        SecretStr(f"postgresql://clickstream:clickstream@127.0.0.1:{_closed_port()}/clickstream")
    )
    products = RedisProductLookup(f"redis://127.0.0.1:{_closed_port()}/0")
    with pytest.raises(psycopg.OperationalError):
        asyncio.run(users.lookup(U1))
    with pytest.raises(StoreError, match="redis ConnectionError: Error 111 connecting") as raised:
        asyncio.run(products.lookup(P1))
    assert isinstance(raised.value.__cause__, redis.ConnectionError)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# --- EnrichEvents on the real stores ----------------------------------------------------------------------


def test_events_are_enriched_from_the_stores(postgres_store: Postgres, redis_store: Redis):
    events = [
        _event("e1", U1, P1),
        _event("e2", U2, P2),
        _event("e3", U1, None),
        _event("e4", NO_USER, P1),
        _event("e5", U2, NO_PRODUCT),
    ]
    expected = [
        EnrichedEvent(events[0], USERS[U1], PRODUCTS[P1], "enriched", []),
        EnrichedEvent(events[1], USERS[U2], PRODUCTS[P2], "enriched", []),
        EnrichedEvent(events[2], USERS[U1], None, "enriched", []),
        EnrichedEvent(events[3], None, PRODUCTS[P1], "partial", [f"user {NO_USER}: not found"]),
        EnrichedEvent(events[4], USERS[U2], None, "partial", [f"product {NO_PRODUCT}: not found"]),
    ]
    _run((postgres_store, redis_store), events, HEALTHY, expected, summary=False)


def test_slow_postgres_degrades_with_a_timeout(postgres_store: Postgres, redis_store: Redis):
    # Another session holds an exclusive lock on the table: every SELECT waits, as behind a long migration.
    locker = psycopg.connect(postgres_store.dsn)
    try:
        locker.execute("LOCK TABLE user_profiles IN ACCESS EXCLUSIVE MODE")
        elapsed = _run(
            (postgres_store, redis_store),
            [_event("e1", U1, P1), _event("e2", U2, None)],
            STRICT,
            [
                ("e1", "partial", (rf"user {U1}: timed out after 0\.3s \(3 attempts\)",)),
                ("e2", "not_enriched", (rf"user {U2}: timed out after 0\.3s \(3 attempts\)",)),
            ],
        )
        # Still locked: the timed-out SELECTs were cancelled in the server, not left queued behind the lock.
        waiting = locker.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    finally:
        locker.rollback()
        locker.close()
    assert waiting == 0
    assert elapsed < 30, f"a locked table must cost about {STRICT.worst_case_lookup_seconds:.1f}s, took {elapsed:.1f}s"


def test_paused_redis_degrades_with_a_timeout(postgres_store: Postgres, redis_store: Redis):
    # CLIENT PAUSE holds every client's commands, as a saturated server would. The pause cannot be lifted
    # early (CLIENT UNPAUSE is itself held), so it is short and the test waits for its end.
    pause_seconds = 6
    admin = redis.Redis.from_url(redis_store.url, socket_timeout=pause_seconds + 10)
    try:
        admin.execute_command("CLIENT", "PAUSE", str(pause_seconds * 1000), "ALL")
        elapsed = _run(
            (postgres_store, redis_store),
            [_event("e1", U1, P1), _event("e2", U2, None)],
            STRICT,
            [
                ("e1", "partial", (rf"product {P1}: timed out after 0\.3s \(3 attempts\)",)),
                ("e2", "enriched", ()),
            ],
        )
    finally:
        admin.ping()  # answered once the pause is over
        admin.close()
    assert elapsed < pause_seconds, f"the lookups must give up within the pause, took {elapsed:.1f}s"


def test_stopped_redis_degrades_with_a_failure_and_the_pipeline_completes(postgres_store: Postgres, redis_store: Redis):
    pid = redis_store.pid
    assert pid is not None
    refused = (  # errno 111: connection refused
        rf"failed: StoreError\(.redis ConnectionError: Error 111 connecting to 127\.0\.0\.1:{STORES.redis_port}\..*\) "
        r"\(3 attempts\)"
    )
    redis_store.stop()
    try:
        assert not redis_store.health().ok
        elapsed = _run(
            (postgres_store, redis_store),
            [_event("e1", U1, P1), _event("e2", U2, P2), _event("e3", NO_USER, P1)],
            STRICT,
            [
                ("e1", "partial", (f"product {P1}: {refused}",)),
                ("e2", "partial", (f"product {P2}: {refused}",)),
                ("e3", "not_enriched", (f"user {NO_USER}: not found", f"product {P1}: {refused}")),
            ],
        )
    finally:
        redis_store.start()
    assert elapsed < 15
    assert redis_store.pid not in (None, pid) and redis_store.health().ok
    assert asyncio.run(RedisProductLookup(redis_store.url).lookup(P1)) == PRODUCTS[P1]
