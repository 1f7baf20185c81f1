"""The event contract's rules beyond the Avro schema, Beam-free: the pipeline's validate stage and the
ingestion service apply the same ones.

``rejection`` names the first rule an event breaks (a dead letter: a producer bug to fix and replay);
``filter_reason`` says why a valid event is out of scope (a bot, an internal test user: counted, not kept).
"""

import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:  # no import at run time: this module must not pull in Beam (schemas.records registers coders)
    from schemas.records import ClickEvent

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


def rejection(event: "ClickEvent", config: ValidationConfig, now_ms: int) -> tuple[str, str] | None:
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


def filter_reason(event: "ClickEvent", config: ValidationConfig, bots: re.Pattern) -> str | None:
    """Why a valid event is out of scope (``bot`` / ``test_user``), or None to keep it."""
    if event.user_agent and bots.search(event.user_agent):
        return "bot"
    if event.user_id.startswith(config.test_user_prefixes) or event.properties.get("is_test") == "true":
        return "test_user"
    return None
