"""The ingestion-side event contract: a pydantic model kept in lockstep with the Avro schema.

Sources send JSON in many dialects; this model normalises them (case of enums, ISO or epoch
timestamps, missing ids) and rejects what cannot become a valid ``ClickEvent``, with a reason per
field. Semantic rules (amount ranges, clock skew, ...) are the pipeline's own ``rejection()``, reused
here so an event is judged by one set of rules wherever it is checked.
"""

import datetime as dt
import time
import uuid
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.records import ClickEvent, epoch_millis
from schemas.rules import ValidationConfig, rejection

EventType = Literal["page_view", "product_view", "search", "add_to_cart", "checkout", "purchase"]
Device = Literal["desktop", "mobile", "tablet", "other"]


class EventIn(BaseModel):
    """One event as a source may send it (JSON); ``to_event()`` gives the Avro-shaped record."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    event_type: EventType
    user_id: str = Field(min_length=1, max_length=128)
    session_hint: str | None = None
    product_id: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    event_time: int | dt.datetime
    device: Device = "other"
    country: str
    user_agent: str | None = None
    referrer: str | None = None
    properties: dict[str, str] = Field(default_factory=dict)

    @field_validator("event_type", "device", mode="before")
    @classmethod
    def _symbol(cls, value: Any) -> Any:
        return value.strip().lower().replace("-", "_").replace(" ", "_") if isinstance(value, str) else value

    @field_validator("device", mode="before")
    @classmethod
    def _unknown_device(cls, value: Any) -> Any:
        return value if value in ("desktop", "mobile", "tablet") else "other"

    @field_validator("country", "currency", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("properties", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): v if isinstance(v, str) else str(v) for k, v in value.items()}
        return value

    def to_event(self) -> ClickEvent:
        event_time = self.event_time
        if isinstance(event_time, dt.datetime):
            event_time = epoch_millis(event_time)
        return ClickEvent(**{**self.model_dump(), "event_time": event_time})


class Unparseable(NamedTuple):
    """Input that is not JSON at all (e.g. a broken line in a replay file)."""

    text: str
    error: str


class Rejection(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    reason: str


def normalize(raw: Any, rules: ValidationConfig | None = None, now_ms: int | None = None) -> ClickEvent | Rejection:
    """A valid, normalised ``ClickEvent``, or why ``raw`` cannot be one."""
    if isinstance(raw, Unparseable):
        return Rejection(code="invalid_json", reason=raw.error)
    if not isinstance(raw, dict):
        return Rejection(code="not_an_object", reason=f"expected a JSON object, got {type(raw).__name__}")
    try:
        event = EventIn.model_validate(raw).to_event()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return Rejection(code="schema_violation", reason=f"{where}: {first['msg']}{more}")
    broken = rejection(event, rules or ValidationConfig(), now_ms if now_ms is not None else int(time.time() * 1000))
    if broken:
        return Rejection(code=broken[0], reason=broken[1])
    return event
