"""Late-data monitor: counts and emits the elements a windowed GroupByKey silently drops as too late.

Beam's GroupByKey discards an element when the input watermark has already passed the expiry of
the window it is assigned to (window end + allowed lateness), without a metric. Python DoFns cannot
read the watermark, so this composite runs as a *sibling* consumer of the same input and learns the
watermark from event-time timers instead:

- each element is keyed to one of ``shards`` keys (round robin, in the global window) together with
  its *expiry*: the end of the window the WindowFn assigns it, before any merging (a session
  element's proto-window is ``[ts, ts + gap)``), plus the allowed lateness; that is exactly what the
  GroupByKey checks;
- per shard, a stateful DoFn keeps ``closed_through``: the highest point of a grid (``resolution_ms``)
  that the watermark is known to have passed, because an event-time timer set just after it fired.
  An element whose expiry is at or before ``closed_through`` is too late: it is counted as
  ``<stage>_dropped_late`` and emitted;
- the timers form a ladder (1, 16, 256 and 4096 grid steps ahead of ``closed_through``): the
  DirectRunner fires every due timer of a key together, so after a watermark jump the bound catches
  up in a few rounds rather than one round per grid step (a runner that delivers due timers one at a
  time in timestamp order pays one cheap firing per grid step instead);
- a shard keeps tracking until 3600 grid steps (an hour at 1 s) past the latest expiry it has seen, so
  the timers stop by themselves when input ends (drain, bounded tests).

Exactness: a counted element was always dropped (the watermark had passed its expiry). Expiries on
the grid are judged exactly: fixed windows whose size and lateness are multiples of the resolution
(the default 1 s grid covers whole-second windows). An expiry between grid points is counted only
once the watermark is past the next grid point, so a session element less than ``resolution_ms``
too late may go uncounted. A shard cannot judge elements before its first timer fired, nor after it
stopped tracking (no input for an hour of event time while the watermark moved on); those pass as on
time and are counted as ``<stage>_late_unchecked``, so a blind monitor is visible. On runners whose
GroupByKey runs in Java (Flink), timestamps are whole milliseconds and the boundary agrees to within
a millisecond.

State: two integers and four timers per shard, whatever the traffic; nothing grows with keys or
time, so no clean-up timer or retention period is needed.
"""

import itertools
import random
from typing import Any, Iterator, Optional, Tuple, TypeVar

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindows, WindowFn
from apache_beam.typehints import typehints
from apache_beam.utils.timestamp import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from transforms.stage_metrics import counter

T = TypeVar("T")

# Ladder rungs, in grid steps ahead of closed_through: a fine step plus catch-up strides.
_RUNGS = (1, 16, 256, 4096)
_US_PER_MS = 1000
# The ladder keeps running this many grid steps past the latest expiry a shard has seen (1 h at 1 s), so
# it stops on its own (drain, bounded tests) yet still knows the watermark after a pause in its input.
_TRACKING_MARGIN_STEPS = 3600


class LateDataConfig(BaseModel):
    """How finely and how widely the monitor tracks the watermark."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    resolution_ms: int = Field(
        1000,
        ge=1,
        le=3_600_000,
        description="Grid on which the monitor tracks the watermark. Window expiries on the grid are judged "
        "exactly; others may go uncounted when less than one step too late. Costs one timer firing per step "
        "of event time per shard.",
    )
    shards: int = Field(
        8,
        ge=1,
        le=1024,
        description="Keys the monitor's state is spread over (parallelism); each tracks the watermark on its own.",
    )


def _floor(micros: int, step: int) -> int:
    return micros // step * step


def _ceil(micros: int, step: int) -> int:
    return -(-micros // step) * step


class _KeyByExpiry(beam.DoFn):
    """(shard, (expiry micros, element)): the expiry of the element's own, unmerged window."""

    def __init__(self, windowfn: WindowFn, allowed_lateness_us: int, shards: int):
        self._windowfn = windowfn
        self._lateness_us = allowed_lateness_us
        self._shards = shards
        self._next_shard: Iterator[int] = iter(())

    def setup(self) -> None:
        start = random.randrange(self._shards)
        self._next_shard = itertools.cycle([(start + i) % self._shards for i in range(self._shards)])

    def process(self, element: Any, timestamp=beam.DoFn.TimestampParam) -> Iterator[Tuple[int, Tuple[int, Any]]]:
        windows = self._windowfn.assign(WindowFn.AssignContext(timestamp, element=element))
        # Dropped from at least one window counts (fixed and session windows assign exactly one).
        expiry = min(w.end.micros for w in windows) + self._lateness_us
        yield next(self._next_shard), (expiry, element)


class _FlagTooLate(beam.DoFn):
    """Per shard: learns a lower bound of the watermark from timers, emits elements already expired."""

    CLOSED_THROUGH = ReadModifyWriteStateSpec("closed_through", VarIntCoder())
    TRACK_UNTIL = ReadModifyWriteStateSpec("track_until", VarIntCoder())
    RUNG_1 = TimerSpec("rung_1", TimeDomain.WATERMARK)
    RUNG_16 = TimerSpec("rung_16", TimeDomain.WATERMARK)
    RUNG_256 = TimerSpec("rung_256", TimeDomain.WATERMARK)
    RUNG_4096 = TimerSpec("rung_4096", TimeDomain.WATERMARK)

    def __init__(self, stage: str, resolution_ms: int):
        self._stage = stage
        self._step = resolution_ms * _US_PER_MS
        self._dropped = None
        self._unchecked = None

    def setup(self) -> None:
        self._dropped = counter(self._stage, "dropped_late")
        self._unchecked = counter(self._stage, "late_unchecked")

    def process(
        self,
        element: Tuple[int, Tuple[int, Any]],
        timestamp=beam.DoFn.TimestampParam,
        closed_state=beam.DoFn.StateParam(CLOSED_THROUGH),
        until_state=beam.DoFn.StateParam(TRACK_UNTIL),
        rung_1=beam.DoFn.TimerParam(RUNG_1),
        rung_16=beam.DoFn.TimerParam(RUNG_16),
        rung_256=beam.DoFn.TimerParam(RUNG_256),
        rung_4096=beam.DoFn.TimerParam(RUNG_4096),
    ) -> Iterator[Any]:
        expiry, value = element[1]
        closed_through: Optional[int] = closed_state.read()
        if closed_through is not None and expiry <= closed_through:
            self._dropped.inc()
            yield value
            return
        until: Optional[int] = until_state.read()
        if closed_through is None or until is None or closed_through >= until:
            # The shard knows nothing about the watermark yet (first element) or stopped tracking it (idle
            # for longer than the margin): the element cannot be judged and passes as on time.
            self._unchecked.inc()
        new_until = _ceil(expiry, self._step) + _TRACKING_MARGIN_STEPS * self._step
        if until is None or new_until > until:
            until_state.write(new_until)
            # Without any bound yet, start the ladder at the element's own time.
            base = closed_through if closed_through is not None else _floor(timestamp.micros, self._step) - self._step
            self._arm(base, new_until, (rung_1, rung_16, rung_256, rung_4096))

    # One callback per rung (Beam needs one per TimerSpec); each fired rung raises closed_through.
    @on_timer(RUNG_1)
    def _on_rung_1(
        self,
        fired=beam.DoFn.TimestampParam,
        closed_state=beam.DoFn.StateParam(CLOSED_THROUGH),
        until_state=beam.DoFn.StateParam(TRACK_UNTIL),
        rung_1=beam.DoFn.TimerParam(RUNG_1),
        rung_16=beam.DoFn.TimerParam(RUNG_16),
        rung_256=beam.DoFn.TimerParam(RUNG_256),
        rung_4096=beam.DoFn.TimerParam(RUNG_4096),
    ) -> None:
        self._advance(fired, closed_state, until_state, (rung_1, rung_16, rung_256, rung_4096))

    @on_timer(RUNG_16)
    def _on_rung_16(
        self,
        fired=beam.DoFn.TimestampParam,
        closed_state=beam.DoFn.StateParam(CLOSED_THROUGH),
        until_state=beam.DoFn.StateParam(TRACK_UNTIL),
        rung_1=beam.DoFn.TimerParam(RUNG_1),
        rung_16=beam.DoFn.TimerParam(RUNG_16),
        rung_256=beam.DoFn.TimerParam(RUNG_256),
        rung_4096=beam.DoFn.TimerParam(RUNG_4096),
    ) -> None:
        self._advance(fired, closed_state, until_state, (rung_1, rung_16, rung_256, rung_4096))

    @on_timer(RUNG_256)
    def _on_rung_256(
        self,
        fired=beam.DoFn.TimestampParam,
        closed_state=beam.DoFn.StateParam(CLOSED_THROUGH),
        until_state=beam.DoFn.StateParam(TRACK_UNTIL),
        rung_1=beam.DoFn.TimerParam(RUNG_1),
        rung_16=beam.DoFn.TimerParam(RUNG_16),
        rung_256=beam.DoFn.TimerParam(RUNG_256),
        rung_4096=beam.DoFn.TimerParam(RUNG_4096),
    ) -> None:
        self._advance(fired, closed_state, until_state, (rung_1, rung_16, rung_256, rung_4096))

    @on_timer(RUNG_4096)
    def _on_rung_4096(
        self,
        fired=beam.DoFn.TimestampParam,
        closed_state=beam.DoFn.StateParam(CLOSED_THROUGH),
        until_state=beam.DoFn.StateParam(TRACK_UNTIL),
        rung_1=beam.DoFn.TimerParam(RUNG_1),
        rung_16=beam.DoFn.TimerParam(RUNG_16),
        rung_256=beam.DoFn.TimerParam(RUNG_256),
        rung_4096=beam.DoFn.TimerParam(RUNG_4096),
    ) -> None:
        self._advance(fired, closed_state, until_state, (rung_1, rung_16, rung_256, rung_4096))

    def _advance(self, fired: Timestamp, closed_state, until_state, rungs) -> None:
        # A rung set at grid point G + 1 us fires once the watermark is >= G + 1 us, i.e. past G; the
        # GroupByKey drops an element when the watermark is past its expiry, so expiry <= G is too late.
        passed = _floor(fired.micros - 1, self._step)
        closed_through = closed_state.read()
        if closed_through is None or passed > closed_through:
            closed_through = passed
            closed_state.write(closed_through)
        until = until_state.read()
        if until is not None and closed_through < until:
            self._arm(closed_through, until, rungs)

    def _arm(self, base: int, until: int, rungs) -> None:
        for steps, rung in zip(_RUNGS, rungs, strict=True):
            rung.set(Timestamp(micros=min(base + steps * self._step, until) + 1))


class LateDataMonitor(beam.PTransform[beam.PCollection[T], beam.PCollection[T]]):
    """Emits, in the global window, the input elements a GroupByKey with ``windowing`` drops as too late.

    Apply it to the same PCollection the windowed aggregation reads (a sibling, not a step before it);
    each emitted element also increments counter ``<stage>_dropped_late``.
    """

    def __init__(self, stage: str, windowing: Windowing, config: Optional[LateDataConfig] = None):
        super().__init__()
        self._stage = stage
        self._windowing = windowing
        self._config = config or LateDataConfig()

    def expand(self, elements: beam.PCollection[T]) -> beam.PCollection[T]:
        element_type = elements.element_type or typehints.Any
        lateness_us = self._windowing.allowed_lateness.micros
        return (
            elements
            | "KeyByExpiry"
            >> beam.ParDo(_KeyByExpiry(self._windowing.windowfn, lateness_us, self._config.shards)).with_output_types(
                typehints.Tuple[int, typehints.Tuple[int, element_type]]
            )
            | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
            | "FlagTooLate"
            >> beam.ParDo(_FlagTooLate(self._stage, self._config.resolution_ms)).with_output_types(element_type)
        )
