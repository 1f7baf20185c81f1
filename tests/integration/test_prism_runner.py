"""The patched Prism (runners/prism_patches) keeps Beam's pane semantics: on-time pane, then one late pane per
late firing, with increasing indexes. Patch 0002 changed which state a bundle copies and writes back."""

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import trigger, window
from apache_beam.utils.windowed_value import PaneInfoTiming

from runners.prism import PrismJobServer, prism_binary_path, prism_patches

PANES: list[tuple[str, int, int, int]] = []  # (key, sum, pane index, timing): the LOOPBACK worker is this process


class _RecordPane(beam.DoFn):
    def process(self, kv, pane=beam.DoFn.PaneInfoParam):
        PANES.append((kv[0], kv[1], pane.index, pane.timing))


def test_prism_is_built_with_the_projects_patches(prism: PrismJobServer):
    assert prism_patches(), "no patches for this Beam version: the pane test below then tests stock Prism"
    assert "patched" in prism_binary_path().parent.name and prism_binary_path().exists()


def test_late_data_within_the_allowed_lateness_makes_late_panes_with_increasing_indexes(prism: PrismJobServer):
    PANES.clear()
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([window.TimestampedValue(("k", 1), t) for t in (1, 2)] + [window.TimestampedValue(("j", 1), 5)])
        .advance_watermark_to(70)  # past the window's end: the on-time panes fire
        .add_elements([window.TimestampedValue(("k", 1), 3)])
        .advance_watermark_to(80)
        .add_elements([window.TimestampedValue(("k", 1), 4), window.TimestampedValue(("j", 1), 6)])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions(
        ["--runner=PortableRunner", f"--job_endpoint={prism.endpoint}", "--environment_type=LOOPBACK", "--streaming"]
    )
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | stream
            | beam.WindowInto(
                window.FixedWindows(60),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
                allowed_lateness=300,
            )
            | beam.CombinePerKey(sum)
            | beam.ParDo(_RecordPane())
        )
    on_time, late = PaneInfoTiming.ON_TIME, PaneInfoTiming.LATE
    assert sorted(PANES) == sorted(
        [("k", 2, 0, on_time), ("k", 1, 1, late), ("k", 1, 2, late), ("j", 1, 0, on_time), ("j", 1, 1, late)]
    )
