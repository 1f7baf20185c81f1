"""The event-time windowing both aggregations share: watermark trigger, late firings, accumulation."""

import apache_beam as beam
from apache_beam.transforms import trigger
from apache_beam.transforms.core import Windowing
from apache_beam.transforms.window import WindowFn


def event_time_windowing(
    windowfn: WindowFn, allowed_lateness_seconds: int, early_firing_seconds: int | None = None
) -> Windowing:
    """ON_TIME pane at the watermark, one LATE pane per late element, optional EARLY panes; accumulating.

    Accumulating panes are full refinements, so a downstream upsert keyed on the window stays correct.
    Late firings use ``Always`` (a stateless trigger: fire on every late element), which means the same as
    ``AfterCount(1)`` but is also accepted by Prism for merging (session) windows, where Prism refuses
    triggers that keep state (apache/beam#31438).
    """
    early = trigger.AfterProcessingTime(early_firing_seconds) if early_firing_seconds else None
    return Windowing(
        windowfn,
        triggerfn=trigger.AfterWatermark(early=early, late=trigger.Always()),
        accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
        allowed_lateness=allowed_lateness_seconds,
    )


def window_into(windowing: Windowing) -> beam.WindowInto:
    """``WindowInto`` for ``windowing``, field by field.

    Not ``beam.WindowInto(windowing)``: Beam 2.76 drops a Windowing's allowed_lateness there (resets it to 0).
    """
    return beam.WindowInto(
        windowing.windowfn,
        trigger=windowing.triggerfn,
        accumulation_mode=windowing.accumulation_mode,
        allowed_lateness=windowing.allowed_lateness,
    )
