import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from pydantic import ValidationError

from schemas.records import EnrichedEvent, Product
from tests.unit.conftest import make_event, streaming_options
from transforms.windowed_metrics import TumblingWindowConfig, WindowedMetrics

W0 = 28_333_333 * 60_000  # a minute boundary (2023-11-14T22:13:00Z), in ms


def _enriched(event_id, at_ms, event_type="purchase", category="shoes", amount=1000, currency="EUR"):
    """An enriched event at ``at_ms``; ``category=None`` means no product."""
    product = Product(f"p-{category}", category, "acme", 1000, currency or "EUR") if category else None
    event = make_event(
        event_id=event_id,
        event_type=event_type,
        event_time=at_ms,
        product_id=product.product_id if product else None,
        amount_minor=amount,
        currency=currency,
    )
    return EnrichedEvent(event, None, product, "enriched" if product else "partial", [])


def _stamped(*events):
    return [TimestampedValue(e, e.event.event_time / 1000) for e in events]


def _at(ms):
    return Timestamp(micros=ms * 1000)


def _row(m):
    """The fields a test compares, in a hashable, readable form."""
    return (
        m.window_start - W0,
        m.window_end - W0,
        m.event_type,
        m.category,
        m.currency,
        m.event_count,
        m.amount_count,
        m.amount_sum_minor,
        m.amount_avg_minor,
        m.amount_p50_minor,
        m.amount_p95_minor,
        m.amount_p99_minor,
        m.pane_timing,
        m.pane_index,
    )


def test_on_time_late_and_too_late_panes():
    stream = (
        TestStream()
        .advance_watermark_to(_at(W0))
        .add_elements(
            _stamped(
                _enriched("a1", W0 + 1_000, amount=1000),
                _enriched("a2", W0 + 2_000, amount=3000),
                _enriched("v1", W0 + 5_000, event_type="page_view", category=None, amount=None, currency=None),
                _enriched("b1", W0 + 61_000, amount=500),
            )
        )
        .advance_watermark_to(_at(W0 + 60_000))  # first window closes: ON_TIME panes
        .advance_watermark_to(_at(W0 + 200_000))  # second window closes too
        .add_elements(_stamped(_enriched("late", W0 + 10_000, amount=2000)))  # 140 s late, within lateness: LATE pane
        .advance_watermark_to(_at(W0 + 60_000 + 300_000 + 1))  # first window expired
        .add_elements(
            _stamped(
                _enriched("too-late", W0 + 20_000, amount=9999),
                _enriched("too-late-unseen-window", W0 - 600_000, event_type="search", category=None, amount=None),
            )
        )
        .advance_watermark_to_infinity()
    )
    config = TumblingWindowConfig()
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | WindowedMetrics(config)
        assert_that(
            result | beam.Map(_row),
            equal_to(
                [
                    (0, 60_000, "purchase", "shoes", "EUR", 2, 2, 4000, 2000.0, 2000.0, 2900.0, 2980.0, "ON_TIME", 0),
                    (0, 60_000, "page_view", "unknown", "", 1, 0, 0, None, None, None, None, "ON_TIME", 0),
                    (0, 60_000, "purchase", "shoes", "EUR", 3, 3, 6000, 2000.0, 2000.0, 2900.0, 2980.0, "LATE", 1),
                    (60_000, 120_000, "purchase", "shoes", "EUR", 1, 1, 500, 500.0, 500.0, 500.0, 500.0, "ON_TIME", 0),
                ]
            ),
            label="Panes",
        )


def test_lateness_boundary_is_exact():
    """With no allowed lateness, data at watermark == window end is still taken; one ms later it is dropped."""
    stream = (
        TestStream()
        .advance_watermark_to(_at(W0))
        .add_elements(_stamped(_enriched("a1", W0 + 1_000)))
        .advance_watermark_to(_at(W0 + 60_000))
        .add_elements(_stamped(_enriched("at-boundary", W0 + 2_000)))
        .advance_watermark_to(_at(W0 + 60_001))
        .add_elements(_stamped(_enriched("past-boundary", W0 + 3_000)))
        .advance_watermark_to_infinity()
    )
    config = TumblingWindowConfig(allowed_lateness_seconds=0)
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | WindowedMetrics(config)
        assert_that(
            result | beam.Map(lambda m: (m.event_count, m.pane_timing, m.pane_index)),
            equal_to([(1, "ON_TIME", 0), (2, "LATE", 1)]),
            label="Panes",
        )


def test_each_key_has_its_own_row():
    events = [
        _enriched("shoes-eur", W0 + 1_000, amount=100),
        _enriched("shoes-eur-2", W0 + 2_000, amount=300),
        _enriched("shoes-usd", W0 + 3_000, amount=700, currency="USD"),
        _enriched("books-eur", W0 + 4_000, category="books", amount=50),
        _enriched("cart-shoes", W0 + 5_000, event_type="add_to_cart", amount=None, currency=None),
        _enriched("view-1", W0 + 6_000, event_type="page_view", category=None, amount=None, currency=None),
        _enriched("view-2", W0 + 7_000, event_type="page_view", category=None, amount=None, currency=None),
    ]
    stream = TestStream().advance_watermark_to(_at(W0)).add_elements(_stamped(*events)).advance_watermark_to_infinity()
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | WindowedMetrics(TumblingWindowConfig())
        assert_that(
            result
            | beam.Map(
                lambda m: (m.event_type, m.category, m.currency, m.event_count, m.amount_sum_minor, m.pane_timing)
            ),
            equal_to(
                [
                    ("purchase", "shoes", "EUR", 2, 400, "ON_TIME"),
                    ("purchase", "shoes", "USD", 1, 700, "ON_TIME"),
                    ("purchase", "books", "EUR", 1, 50, "ON_TIME"),
                    ("add_to_cart", "shoes", "", 1, 0, "ON_TIME"),
                    ("page_view", "unknown", "", 2, 0, "ON_TIME"),
                ]
            ),
            label="Rows",
        )


def test_percentiles_match_numpy_linear_interpolation():
    rng = random.Random(20240611)
    amounts = [rng.randint(1, 500_000) for _ in range(257)] + [rng.choice([99, 199]) for _ in range(40)]
    events = [_enriched(f"e{i}", W0 + rng.randrange(60_000), amount=a) for i, a in enumerate(amounts)]
    p50, p95, p99 = np.percentile(amounts, [50, 95, 99])

    def check(metrics):
        if len(metrics) != 1:
            raise BeamAssertException(f"expected one pane, got {metrics}")
        m = metrics[0]
        actual = (m.amount_count, m.amount_sum_minor, m.amount_avg_minor, m.amount_p50_minor, m.amount_p95_minor)
        expected = (len(amounts), sum(amounts), pytest.approx(np.mean(amounts)), pytest.approx(p50), pytest.approx(p95))
        if actual != expected or m.amount_p99_minor != pytest.approx(p99):
            raise BeamAssertException(f"{actual} p99={m.amount_p99_minor} != {expected} p99={p99}")

    stream = TestStream().advance_watermark_to(_at(W0)).add_elements(_stamped(*events)).advance_watermark_to_infinity()
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | WindowedMetrics(TumblingWindowConfig())
        assert_that(result, check)


def test_early_panes_fire_on_processing_time():
    stream = (
        TestStream()
        .advance_watermark_to(_at(W0))
        .add_elements(_stamped(_enriched("a1", W0 + 1_000, amount=100)))
        .advance_processing_time(11)
        .add_elements(_stamped(_enriched("a2", W0 + 2_000, amount=200)))
        .advance_watermark_to(_at(W0 + 60_000))
        .advance_watermark_to_infinity()
    )
    config = TumblingWindowConfig(early_firing_seconds=10)
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | WindowedMetrics(config)
        assert_that(
            result | beam.Map(lambda m: (m.event_count, m.amount_sum_minor, m.pane_timing, m.pane_index)),
            equal_to([(1, 100, "EARLY", 0), (2, 300, "ON_TIME", 1)]),
        )


def test_too_late_data_enters_no_pane():
    """Past window end + allowed lateness, the GroupByKey drops data: the final pane has only what was on time."""
    on_time = [_enriched(f"o{i}", W0 + i * 1_000) for i in range(16)]
    too_late = [_enriched(f"t{i}", W0 + i * 1_000) for i in range(8)]
    stream = (
        TestStream()
        .advance_watermark_to(_at(W0))
        .add_elements(_stamped(*on_time))
        .advance_watermark_to(_at(W0 + 400_000))
        .add_elements(_stamped(*too_late))
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | WindowedMetrics()
        assert_that(result | beam.Map(lambda m: (m.event_count, m.pane_timing)), equal_to([(16, "ON_TIME")]))


def test_config_is_validated_with_clear_messages():
    assert TumblingWindowConfig().size_seconds == 60
    assert TumblingWindowConfig().allowed_lateness_seconds == 300
    with pytest.raises(ValidationError, match="size_seconds"):
        TumblingWindowConfig(size_seconds=0)
    with pytest.raises(ValidationError, match="extra"):
        TumblingWindowConfig(window_seconds=60)
    with pytest.raises(ValidationError, match="frozen"):
        TumblingWindowConfig().size_seconds = 10
