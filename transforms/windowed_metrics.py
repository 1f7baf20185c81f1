"""Windowed metrics: per (event_type, category, currency) event-time tumbling-window counts and amounts.

Each pane is a complete refinement of its window (ACCUMULATING), so the sink can upsert on
(window_start, window_end, event_type, category, currency) and keep the highest ``pane_index``: an
ON_TIME pane when the watermark passes the window end, optional EARLY panes before it, one LATE pane
per late element within the allowed lateness. Later data is dropped by the GroupByKey, as Beam does;
because the last pane of each window counts every event it holds, the run summary derives how many
were dropped from the outputs (events in minus the events in final panes), exactly and at no cost.

Percentiles are exact (every amount of the window is kept until the window expires), interpolated
linearly between the closest ranks like ``numpy.percentile``'s default; amounts are only aggregated
within one currency.
"""

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.window import FixedWindows, IntervalWindow
from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming
from pydantic import BaseModel, ConfigDict, Field

from schemas.records import EnrichedEvent, WindowMetric
from transforms.stage_metrics import counter
from transforms.windowing import event_time_windowing, window_into

STAGE = "windowed_metrics"
UNKNOWN_CATEGORY = "unknown"
NO_CURRENCY = ""

_Dimensions = tuple[str, str, str]  # (event_type, category, currency)


class TumblingWindowConfig(BaseModel):
    """Event-time tumbling windows for the metrics; whole seconds keep window bounds on the ms grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size_seconds: int = Field(60, ge=1, le=86_400, description="Window length in event time.")
    allowed_lateness_seconds: int = Field(
        300,
        ge=0,
        le=7 * 86_400,
        description="How long after the window end late events still refine it (one LATE pane each); "
        "the window's state is kept that long. Later events are dropped and counted.",
    )
    early_firing_seconds: int | None = Field(
        None,
        ge=1,
        description="Processing-time delay after a pane's first element before a speculative EARLY pane; "
        "None emits nothing before the watermark passes the window end.",
    )


class _Stats(NamedTuple):
    event_count: int
    amounts: list[int]  # sorted


def _dimensions(enriched: EnrichedEvent) -> tuple[_Dimensions, int | None]:
    event = enriched.event
    category = enriched.product.category if enriched.product is not None else UNKNOWN_CATEGORY
    return (event.event_type, category, event.currency or NO_CURRENCY), event.amount_minor


def _percentile(ordered: Sequence[int], q: float) -> float | None:
    """numpy.percentile(..., method="linear") on an already sorted sequence."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


class _AmountStatsFn(beam.CombineFn):
    """Counts events and keeps every amount: exact percentiles need them all."""

    def create_accumulator(self) -> list:
        return [0, []]

    def add_input(self, accumulator: list, amount: int | None) -> list:
        accumulator[0] += 1
        if amount is not None:
            accumulator[1].append(amount)
        return accumulator

    def merge_accumulators(self, accumulators) -> list:
        merged = self.create_accumulator()
        for count, amounts in accumulators:
            merged[0] += count
            merged[1].extend(amounts)
        return merged

    def extract_output(self, accumulator: list) -> _Stats:
        return _Stats(accumulator[0], sorted(accumulator[1]))


class _ToWindowMetric(beam.DoFn):
    """Adds the window bounds and pane (which firing this is) that the upsert downstream relies on."""

    def setup(self) -> None:
        self._panes = {
            timing: counter(STAGE, f"panes_{PaneInfoTiming.to_string(timing).lower()}")
            for timing in (PaneInfoTiming.EARLY, PaneInfoTiming.ON_TIME, PaneInfoTiming.LATE, PaneInfoTiming.UNKNOWN)
        }

    def process(
        self,
        element: tuple[_Dimensions, _Stats],
        window: IntervalWindow = beam.DoFn.WindowParam,
        pane: PaneInfo = beam.DoFn.PaneInfoParam,
    ) -> Iterator[WindowMetric]:
        (event_type, category, currency), stats = element
        amounts = stats.amounts
        total = sum(amounts)
        self._panes[pane.timing].inc()
        yield WindowMetric(
            window_start=window.start.micros // 1000,
            window_end=window.end.micros // 1000,
            event_type=event_type,
            category=category,
            currency=currency,
            event_count=stats.event_count,
            amount_count=len(amounts),
            amount_sum_minor=total,
            amount_avg_minor=total / len(amounts) if amounts else None,
            amount_p50_minor=_percentile(amounts, 50),
            amount_p95_minor=_percentile(amounts, 95),
            amount_p99_minor=_percentile(amounts, 99),
            pane_timing=PaneInfoTiming.to_string(pane.timing),
            pane_index=pane.index,
        )


def _windowing(config: TumblingWindowConfig) -> Windowing:
    return event_time_windowing(
        FixedWindows(config.size_seconds), config.allowed_lateness_seconds, config.early_firing_seconds
    )


class WindowedMetrics(beam.PTransform[beam.PCollection[EnrichedEvent], beam.PCollection[WindowMetric]]):
    """Tumbling-window metrics of timestamped enriched events."""

    def __init__(self, config: TumblingWindowConfig | None = None):
        super().__init__()
        self._config = config or TumblingWindowConfig()

    def expand(self, events: beam.PCollection[EnrichedEvent]) -> beam.PCollection[WindowMetric]:
        return (
            events
            | "KeyByDimensions" >> beam.Map(_dimensions).with_output_types(tuple[_Dimensions, int | None])
            | "Window" >> window_into(_windowing(self._config))
            | "Aggregate" >> beam.CombinePerKey(_AmountStatsFn())
            | "ToWindowMetric" >> beam.ParDo(_ToWindowMetric()).with_output_types(WindowMetric)
        )
