"""User sessions: event-time session windows per user, summarised per pane.

A session is a run of one user's events with gaps shorter than ``gap_seconds``; windows merge as
events arrive, so a late event can bridge two sessions into one. Panes ACCUMULATE: each is the full
summary of the session so far (ON_TIME when the watermark passes the session end + gap, optional
EARLY panes, one LATE pane per late event within the allowed lateness). When late data merges or
extends a session, Beam restarts that session's pane index at 0 (its pane state does not survive a
merge), so the sink upserts on (user_id, session_start) and lets the latest pane win. Events later
than the allowed lateness are dropped by the GroupByKey, as Beam does (the run summary derives how
many from the outputs).
"""

from collections.abc import Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.window import Sessions
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming
from pydantic import BaseModel, ConfigDict, Field

from schemas.records import EnrichedEvent, SessionSummary
from transforms.stage_metrics import counter
from transforms.windowing import event_time_windowing, window_into

STAGE = "sessions"
PURCHASE = "purchase"

# What a session needs of an event, projected before the shuffle: (event_time, product_id, event_type,
# currency, amount_minor).
_Fact = tuple[int, str | None, str, str | None, int | None]


class SessionWindowConfig(BaseModel):
    """Event-time session windows per user."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gap_seconds: int = Field(
        1800, ge=1, le=86_400, description="Inactivity in event time that ends a session (and opens a new one)."
    )
    allowed_lateness_seconds: int = Field(
        300,
        ge=0,
        le=7 * 86_400,
        description="How long after a session's end + gap late events still refine or merge it (one LATE pane "
        "each); the session's state is kept that long. Later events are dropped and counted.",
    )
    early_firing_seconds: int | None = Field(
        None,
        ge=1,
        description="Processing-time delay after a pane's first element before a speculative EARLY pane; "
        "None emits nothing before the session closes in event time.",
    )


class _Summary(NamedTuple):
    start: int
    end: int
    event_count: int
    distinct_products: int
    purchase_count: int
    purchase_totals: dict[str, int]


def _fact(enriched: EnrichedEvent) -> tuple[str, _Fact]:
    event = enriched.event
    return event.user_id, (event.event_time, event.product_id, event.event_type, event.currency, event.amount_minor)


class _SessionAccumulator:
    """Mutable on purpose: add_input runs once per event."""

    __slots__ = ("start", "end", "event_count", "products", "purchase_count", "purchase_totals")

    def __init__(self) -> None:
        self.start: int | None = None
        self.end: int | None = None
        self.event_count = 0
        self.products: set[str] = set()
        self.purchase_count = 0
        self.purchase_totals: dict[str, int] = {}


class _SessionStatsFn(beam.CombineFn):
    """Mergeable session aggregates, so merging session windows is just merging accumulators."""

    def create_accumulator(self) -> _SessionAccumulator:
        return _SessionAccumulator()

    def add_input(self, acc: _SessionAccumulator, fact: _Fact) -> _SessionAccumulator:
        event_time, product_id, event_type, currency, amount = fact
        acc.start = event_time if acc.start is None else min(acc.start, event_time)
        acc.end = event_time if acc.end is None else max(acc.end, event_time)
        acc.event_count += 1
        if product_id is not None:
            acc.products.add(product_id)
        if event_type == PURCHASE:
            acc.purchase_count += 1
            if currency is not None and amount is not None:
                acc.purchase_totals[currency] = acc.purchase_totals.get(currency, 0) + amount
        return acc

    def merge_accumulators(self, accumulators) -> _SessionAccumulator:
        merged = _SessionAccumulator()
        for acc in accumulators:
            if acc.start is not None:
                merged.start = acc.start if merged.start is None else min(merged.start, acc.start)
                merged.end = acc.end if merged.end is None else max(merged.end, acc.end)
            merged.event_count += acc.event_count
            merged.products |= acc.products
            merged.purchase_count += acc.purchase_count
            for currency, amount in acc.purchase_totals.items():
                merged.purchase_totals[currency] = merged.purchase_totals.get(currency, 0) + amount
        return merged

    def extract_output(self, acc: _SessionAccumulator) -> _Summary:
        return _Summary(
            acc.start, acc.end, acc.event_count, len(acc.products), acc.purchase_count, dict(acc.purchase_totals)
        )


class _ToSessionSummary(beam.DoFn):
    """Adds the pane (which firing this is) that the upsert downstream relies on."""

    def setup(self) -> None:
        self._panes = {
            timing: counter(STAGE, f"panes_{PaneInfoTiming.to_string(timing).lower()}")
            for timing in (PaneInfoTiming.EARLY, PaneInfoTiming.ON_TIME, PaneInfoTiming.LATE, PaneInfoTiming.UNKNOWN)
        }

    def process(
        self, element: tuple[str, _Summary], pane: PaneInfo = beam.DoFn.PaneInfoParam
    ) -> Iterator[SessionSummary]:
        user_id, summary = element
        self._panes[pane.timing].inc()
        yield SessionSummary(
            user_id=user_id,
            session_start=summary.start,
            session_end=summary.end,
            duration_ms=summary.end - summary.start,
            event_count=summary.event_count,
            distinct_products=summary.distinct_products,
            purchase_count=summary.purchase_count,
            purchase_totals_minor=summary.purchase_totals,
            converted=summary.purchase_count > 0,
            pane_timing=PaneInfoTiming.to_string(pane.timing),
            pane_index=pane.index,
        )


def _windowing(config: SessionWindowConfig) -> Windowing:
    return event_time_windowing(
        Sessions(config.gap_seconds), config.allowed_lateness_seconds, config.early_firing_seconds
    )


class UserSessions(beam.PTransform[beam.PCollection[EnrichedEvent], beam.PCollection[SessionSummary]]):
    """Session summaries of timestamped enriched events per user."""

    def __init__(self, config: SessionWindowConfig | None = None):
        super().__init__()
        self._config = config or SessionWindowConfig()

    def expand(self, events: beam.PCollection[EnrichedEvent]) -> beam.PCollection[SessionSummary]:
        return (
            events
            | "KeyByUser" >> beam.Map(_fact).with_output_types(tuple[str, _Fact])
            | "Window" >> window_into(_windowing(self._config))
            | "Summarize" >> beam.CombinePerKey(_SessionStatsFn())
            | "ToSessionSummary" >> beam.ParDo(_ToSessionSummary()).with_output_types(SessionSummary)
        )
