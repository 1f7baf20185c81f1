"""Faults on the live pipeline with the real stack: each case stops, slows or kills one real part (by pid)
under steady load and ends with the reconciliation by record id: nothing lost, duplicates counted.

No case kills an SDK worker: the workers are LOOPBACK threads of the launcher, whose death is the Prism case's
restart. No external worker pool ships: on Prism 2.76 an EXTERNAL pool never ran the dead-letter branch (README)."""

import psycopg
import pytest

from runners.live import LiveSummary
from tests.faults.harness import run_case, sample

pytestmark = pytest.mark.integration


def test_broker_stopped_for_20s(fault_stack):
    run_case("broker stopped 20 s", fault_stack, fault_stack.kafka.stop, fault_stack.kafka.start)


def test_registry_stopped_for_20s_while_a_new_writer_schema_arrives(fault_stack):
    """From the fault on, every record is written with v1, a schema id the decoder has not fetched yet: it
    must wait for the registry, not dead-letter (run_case checks dead letters <= bad records published)."""
    run_case(
        "registry stopped 20 s",
        fault_stack,
        fault_stack.registry.stop,
        fault_stack.registry.start,
        shares={"v1_share": 0.0},
        fault_records=lambda settings: sample(settings, seed=7, events=6000, v1_share=1.0),
    )


def _degraded_share(summary: LiveSummary) -> float:
    """Routed events that went on partial / not_enriched (about 2.5 % without a store fault: unknown ids)."""
    counts = summary.enrichment
    return (counts["partial"] + counts["not_enriched"]) / max(1, sum(counts.values()))


#: A 5 s enrichment cache for the store-outage cases: with the default 300 s the samples' ~400 users and ~150
#: products can all be cached before the outage (3.7 % and 1.4 % degraded measured, below the no-fault share),
#: and the cases would test the cache instead of the fallback.
SHORT_CACHE = ("enrichment.cache_ttl_seconds=5", "enrichment.cache_not_found_ttl_seconds=5")


def test_postgres_stopped_and_restarted(fault_stack):
    summary = run_case(
        "postgres stopped 20 s",
        fault_stack,
        fault_stack.postgres.stop,
        fault_stack.postgres.start,
        overrides=SHORT_CACHE,
    )
    # Twice the share without a store fault.
    assert summary.enrichment["enriched"] > 0 and _degraded_share(summary) > 0.05


def test_postgres_slower_than_the_lookup_timeout(fault_stack):
    """An exclusive lock on the profile table for 20 s: every uncached user lookup blocks past its timeout."""
    locker = psycopg.connect(fault_stack.postgres.dsn)

    def lock() -> None:
        locker.execute("LOCK TABLE user_profiles IN ACCESS EXCLUSIVE MODE")

    try:
        summary = run_case("postgres locked 20 s", fault_stack, lock, locker.rollback)
    finally:
        locker.close()
    # Cached users hide most of the lock: 4.0 % degraded measured against about 2.5 % without it.
    assert summary.enrichment["enriched"] > 0 and _degraded_share(summary) > 0


def test_redis_stopped_and_restarted(fault_stack):
    summary = run_case(
        "redis stopped 20 s", fault_stack, fault_stack.redis.stop, fault_stack.redis.start, overrides=SHORT_CACHE
    )
    assert summary.enrichment["enriched"] > 0 and _degraded_share(summary) > 0.04


def test_prism_killed_and_the_job_started_again(fault_stack):
    def restart(pipeline) -> None:
        pipeline.stop()  # the launcher's job failed with Prism
        pipeline.start()

    run_case(
        "prism SIGKILLed",
        fault_stack,
        fault_stack.prism.kill,
        fault_stack.prism.start,
        outage_seconds=2,
        after_restore=restart,
    )
