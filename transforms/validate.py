"""Validate + filter: contract rules reject (dead letter with a reason); business predicates filter (counted).

The split matters downstream: a rejected event is a producer bug someone must fix and replay; a
filtered event (a bot, an internal test user) is correct data we choose not to count.
"""

import re
import time
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam import pvalue
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.records import ClickEvent, Provenance, SourcedEvent, TrackedDeadLetter, TrackedEvent
from transforms.dead_letters import dead_letter
from transforms.outputs import multi_output_hints, typed
from transforms.stage_metrics import counter

STAGE = "validate"
_DEAD = "dead_letters"
_FILTERED = "filtered"

_NEEDS_PRODUCT = frozenset({"product_view", "add_to_cart", "purchase"})
_NEEDS_AMOUNT = frozenset({"purchase"})
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class ValidationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_future_skew_seconds: int = Field(
        300,
        ge=0,
        description="Reject events whose event time is this far ahead of the worker clock (client clock skew).",
    )
    max_event_age_seconds: int = Field(
        7 * 24 * 3600, gt=0, description="Reject events older than this (replays of ancient data need a backfill job)."
    )
    max_amount_minor: int = Field(
        100_000_000, gt=0, description="Largest plausible amount in minor units; larger ones are rejected."
    )
    bot_user_agent_pattern: str = Field(
        r"(?i)(bot|crawler|spider|headless|curl/|python-requests)",
        description="Regex on user_agent; matching events are filtered (counted, not dead-lettered).",
    )
    test_user_prefixes: tuple[str, ...] = Field(
        ("test-", "internal-"), description="user_id prefixes of internal test users; their events are filtered."
    )

    @field_validator("bot_user_agent_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from err
        return value


class ValidationResult(NamedTuple):
    valid: beam.PCollection  # PCollection[TrackedEvent]
    dead_letters: beam.PCollection  # PCollection[TrackedDeadLetter]
    filtered: beam.PCollection  # PCollection[TrackedEvent]: out of scope on purpose, for auditing counts


def rejection(event: ClickEvent, config: ValidationConfig, now_ms: int) -> Optional[tuple[str, str]]:
    """The first contract rule ``event`` breaks, as (error_code, reason), or None when it is valid."""
    for name in ("event_id", "user_id"):
        if not getattr(event, name).strip():
            return "missing_field", f"{name} is empty"
    if not _COUNTRY.match(event.country):
        return "invalid_country", f"country {event.country!r} is not an ISO 3166-1 alpha-2 code"
    if event.event_type in _NEEDS_PRODUCT and not event.product_id:
        return "missing_field", f"{event.event_type} event needs product_id"
    if event.amount_minor is None:
        if event.event_type in _NEEDS_AMOUNT:
            return "missing_field", f"{event.event_type} event needs amount_minor"
    else:
        if not 0 <= event.amount_minor <= config.max_amount_minor:
            return "amount_out_of_range", f"amount_minor {event.amount_minor} outside [0, {config.max_amount_minor}]"
        if not event.currency or not _CURRENCY.match(event.currency):
            return "invalid_currency", f"currency {event.currency!r} is not an ISO 4217 code"
    if event.event_time > now_ms + config.max_future_skew_seconds * 1000:
        ahead = (event.event_time - now_ms) / 1000
        return (
            "event_time_in_future",
            f"event time is {ahead:.0f}s ahead of the clock (max {config.max_future_skew_seconds}s)",
        )
    if event.event_time < now_ms - config.max_event_age_seconds * 1000:
        age = (now_ms - event.event_time) / 1000
        return "event_time_too_old", f"event is {age:.0f}s old (max {config.max_event_age_seconds}s)"
    return None


def filter_reason(event: ClickEvent, config: ValidationConfig, bots: re.Pattern) -> Optional[str]:
    """Why a valid event is out of scope (``bot`` / ``test_user``), or None to keep it."""
    if event.user_agent and bots.search(event.user_agent):
        return "bot"
    if event.user_id.startswith(config.test_user_prefixes) or event.properties.get("is_test") == "true":
        return "test_user"
    return None


class _ValidateFn(beam.DoFn):
    def __init__(self, config: ValidationConfig):
        self._config = config
        self._valid = counter(STAGE, "valid")
        self._invalid = counter(STAGE, "dead_letter")
        self._filtered = counter(STAGE, "filtered")

    def setup(self):
        self._bots = re.compile(self._config.bot_user_agent_pattern)

    def process(self, item: SourcedEvent):
        event = item.event
        rejected = rejection(event, self._config, int(time.time() * 1000))
        if rejected:
            code, reason = rejected
            self._invalid.inc()
            counter(STAGE, f"dead_letter_{code}").inc()
            yield pvalue.TaggedOutput(
                _DEAD, dead_letter(STAGE, code, f"event {event.event_id}: {reason}", item.source.value, item.source)
            )
            return
        why = filter_reason(event, self._config, self._bots)
        if why:
            self._filtered.inc()
            counter(STAGE, f"filtered_{why}").inc()
            yield pvalue.TaggedOutput(_FILTERED, TrackedEvent(event, Provenance.of(item.source)))
            return
        self._valid.inc()
        yield TrackedEvent(event, Provenance.of(item.source))


class ValidateEvents(beam.PTransform):
    """Applies contract rules and business filters; returns ``ValidationResult(valid, dead_letters)``."""

    def __init__(self, config: ValidationConfig):
        super().__init__()
        self._config = config

    def default_type_hints(self):
        return multi_output_hints(SourcedEvent)

    def expand(self, events: beam.PCollection[SourcedEvent]) -> ValidationResult:
        fn = _ValidateFn(self._config)
        results = events | "ValidateAndFilter" >> beam.ParDo(fn).with_outputs(_DEAD, _FILTERED, main="valid")
        return ValidationResult(
            typed(results.valid, TrackedEvent),
            typed(results[_DEAD], TrackedDeadLetter),
            typed(results[_FILTERED], TrackedEvent),
        )
