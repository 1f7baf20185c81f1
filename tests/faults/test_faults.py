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
