"""Waiting out infrastructure faults inside a bundle: a service that is down is never a record's fault.

A record that cannot be decoded or encoded because the schema registry is unreachable must not become a
dead letter: it is retried here with capped exponential backoff. Beyond ``max_wait_seconds`` the error is
raised, which fails the bundle. Prism (2.76) then fails the job rather than retrying the bundle (its
``executePipeline`` returns the first bundle error); nothing is lost, because input offsets are committed
only for completely written records, so the job started again resumes where the outage stopped it. Runners
that retry bundles (Flink, Dataflow) retry it themselves.
"""

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from schemas.serde import RegistryUnavailableError
from transforms.stage_metrics import counter

_LOG = logging.getLogger(__name__)
T = TypeVar("T")


class InfraRetryConfig(BaseModel):
    """How long a stage waits for a service that is down before failing its bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_wait_seconds: float = Field(
        300.0, gt=0, description="Retry an unreachable registry this long within a bundle, then fail the bundle."
    )
    initial_backoff_seconds: float = Field(0.2, gt=0, description="First wait between attempts; doubled each time.")
    max_backoff_seconds: float = Field(5.0, gt=0, description="Longest wait between two attempts.")


def call_with_retry(stage: str, config: InfraRetryConfig, call: Callable[[], T]) -> T:
    """``call()``, retried while it raises ``RegistryUnavailableError``; record faults pass straight through.

    The first attempt runs bare: building tenacity's ``Retrying`` costs ~50 us, paid per element otherwise.
    """
    try:
        return call()
    except RegistryUnavailableError:
        pass  # the registry is down: wait it out below (the first attempt counts as tenacity's first)

    def log(state) -> None:
        counter(stage, "infra_retries").inc()
        _LOG.warning("%s: %s; retrying (attempt %d)", stage, state.outcome.exception(), state.attempt_number)

    retrying = Retrying(
        retry=retry_if_exception_type(RegistryUnavailableError),
        wait=wait_exponential(multiplier=config.initial_backoff_seconds, max=config.max_backoff_seconds),
        stop=stop_after_delay(config.max_wait_seconds),
        before_sleep=log,
        reraise=True,
    )
    return retrying(call)
