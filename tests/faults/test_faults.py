"""Faults on the live pipeline with the real stack: each case stops, slows or kills one real part (by pid)
under steady load and ends with the reconciliation by record id: nothing lost, duplicates counted."""

import pytest

from tests.faults.harness import RESULTS, run_case

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    print("\n| case | in | routed | dead-lettered | filtered | duplicates | lost | recovery |")
    print("\n".join(RESULTS))


def test_broker_stopped_for_20s(fault_stack):
    run_case("broker stopped 20 s", fault_stack, fault_stack.kafka.stop, fault_stack.kafka.start)


def test_registry_stopped_for_20s(fault_stack):
    rec = run_case("registry stopped 20 s", fault_stack, fault_stack.registry.stop, fault_stack.registry.start)
    assert rec.dead_lettered < rec.records_in * 0.1  # only the sample's own bad records, none for the outage


def test_redis_stopped_and_restarted(fault_stack):
    run_case("redis stopped 20 s", fault_stack, fault_stack.redis.stop, fault_stack.redis.start)


def test_postgres_stopped_and_restarted(fault_stack):
    run_case("postgres stopped 20 s", fault_stack, fault_stack.postgres.stop, fault_stack.postgres.start)


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
