import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from pydantic import ValidationError

from schemas.records import EnrichedEvent
from tests.unit.conftest import make_event, streaming_options
from transforms.sessions import SessionWindowConfig, UserSessions

S0 = 1_700_000_000_000  # ms
MIN = 60_000


def _enriched(event_id, user_id, at_ms, event_type="page_view", product_id=None, amount=None, currency=None):
    event = make_event(
        event_id=event_id,
        user_id=user_id,
        event_type=event_type,
        event_time=at_ms,
        product_id=product_id,
        amount_minor=amount,
        currency=currency,
    )
    return EnrichedEvent(event, None, None, "partial", [])


def _stamped(*events):
    return [TimestampedValue(e, e.event.event_time / 1000) for e in events]


def _at(ms):
    return Timestamp(micros=ms * 1000)


def _row(s):
    return (
        s.user_id,
        s.session_start - S0,
        s.session_end - S0,
        s.duration_ms,
        s.event_count,
        s.pane_timing,
        s.pane_index,
    )


def test_a_bridging_event_merges_two_sessions_and_a_long_gap_splits_them():
    config = SessionWindowConfig(gap_seconds=6 * 60)
    stream = (
        TestStream()
        .advance_watermark_to(_at(S0))
        .add_elements(
            _stamped(
                _enriched("b1", "u-bridge", S0),
                _enriched("b2", "u-bridge", S0 + 10 * MIN),
                _enriched("a1", "u-apart", S0),
                _enriched("a2", "u-apart", S0 + 20 * MIN),
            )
        )
        .advance_watermark_to(_at(S0 + 3 * MIN))
        .add_elements(_stamped(_enriched("b3", "u-bridge", S0 + 5 * MIN)))  # [5, 11) overlaps [0, 6) and [10, 16)
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | UserSessions(config)
        assert_that(
            result | beam.Map(_row),
            equal_to(
                [
                    ("u-bridge", 0, 10 * MIN, 10 * MIN, 3, "ON_TIME", 0),
                    ("u-apart", 0, 0, 0, 1, "ON_TIME", 0),
                    ("u-apart", 20 * MIN, 20 * MIN, 0, 1, "ON_TIME", 0),
                ]
            ),
            label="Sessions",
        )


def test_summary_fields():
    buyer = [
        _enriched("v1", "buyer", S0, "product_view", "p1"),
        _enriched("v2", "buyer", S0 + 1 * MIN, "product_view", "p2"),
        _enriched("v3", "buyer", S0 + 2 * MIN, "product_view", "p1"),
        _enriched("c1", "buyer", S0 + 3 * MIN, "add_to_cart", "p1", 1000, "EUR"),
        _enriched("o1", "buyer", S0 + 4 * MIN, "purchase", "p1", 1000, "EUR"),
        _enriched("o2", "buyer", S0 + 5 * MIN, "purchase", "p2", 500, "EUR"),
        _enriched("o3", "buyer", S0 + 6 * MIN, "purchase", "p3", 700, "USD"),
        _enriched("x1", "buyer", S0 + 7 * MIN),
    ]
    browser = [
        _enriched("w1", "browser", S0 + 2 * MIN),
        _enriched("w2", "browser", S0 + 3 * MIN, "product_view", "p9"),
        _enriched("w3", "browser", S0 + 4 * MIN, "add_to_cart", "p9", 300, "EUR"),
    ]
    stream = (
        TestStream()
        .advance_watermark_to(_at(S0))
        .add_elements(_stamped(*buyer, *browser))
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | UserSessions(SessionWindowConfig())
        assert_that(
            result
            | beam.Map(
                lambda s: (
                    *_row(s),
                    s.distinct_products,
                    s.purchase_count,
                    sorted(s.purchase_totals_minor.items()),
                    s.converted,
                )
            ),
            equal_to(
                [
                    ("buyer", 0, 7 * MIN, 7 * MIN, 8, "ON_TIME", 0, 3, 3, [("EUR", 1500), ("USD", 700)], True),
                    ("browser", 2 * MIN, 4 * MIN, 2 * MIN, 3, "ON_TIME", 0, 1, 0, [], False),
                ]
            ),
        )


def test_late_event_refines_the_session_and_too_late_events_are_dropped():
    gap, lateness = 30 * MIN, 5 * MIN
    stream = (
        TestStream()
        .advance_watermark_to(_at(S0))
        .add_elements(_stamped(_enriched("l1", "late", S0), _enriched("l2", "late", S0 + 1 * MIN)))
        .advance_watermark_to(_at(S0 + 1 * MIN + gap + 1_000))  # session [0, 31 min) closes: ON_TIME
        .add_elements(_stamped(_enriched("l3", "late", S0 + 30_000)))  # inside the session: LATE pane 1
        .advance_watermark_to(_at(S0 + 1 * MIN + gap + lateness + 1_000))  # session expired
        .add_elements(
            _stamped(
                _enriched("too-late", "late", S0 + 40_000),  # expiry 35:40 < watermark 36:01
                _enriched("too-late-new-user", "ghost", S0),  # expiry 35:00
            )
        )
        .advance_watermark_to_infinity()
    )
    config = SessionWindowConfig()
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | UserSessions(config)
        assert_that(
            result | beam.Map(_row),
            equal_to(
                [
                    ("late", 0, 1 * MIN, 1 * MIN, 2, "ON_TIME", 0),
                    ("late", 0, 1 * MIN, 1 * MIN, 3, "LATE", 1),
                ]
            ),
            label="Sessions",
        )


def test_a_late_event_that_merges_sessions_restarts_the_pane_index():
    """Beam keeps no pane state across a merge: the merged session's LATE pane has index 0."""
    config = SessionWindowConfig(gap_seconds=6 * 60, allowed_lateness_seconds=10 * 60)
    stream = (
        TestStream()
        .advance_watermark_to(_at(S0))
        .add_elements(_stamped(_enriched("m1", "merge", S0), _enriched("m2", "merge", S0 + 10 * MIN)))
        .advance_watermark_to(_at(S0 + 17 * MIN))  # [0, 6) and [10, 16) both closed
        .add_elements(_stamped(_enriched("m3", "merge", S0 + 5 * MIN)))  # [5, 11): expiry 21 min, bridges both
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=streaming_options()) as p:
        result = p | stream | UserSessions(config)
        assert_that(
            result | beam.Map(_row),
            equal_to(
                [
                    ("merge", 0, 0, 0, 1, "ON_TIME", 0),
                    ("merge", 10 * MIN, 10 * MIN, 0, 1, "ON_TIME", 0),
                    ("merge", 0, 10 * MIN, 10 * MIN, 3, "LATE", 0),
                ]
            ),
            label="Sessions",
        )


def test_config_defaults_and_validation():
    config = SessionWindowConfig()
    assert (config.gap_seconds, config.allowed_lateness_seconds, config.early_firing_seconds) == (1800, 300, None)
    with pytest.raises(ValidationError, match="gap_seconds"):
        SessionWindowConfig(gap_seconds=0)
    with pytest.raises(ValidationError, match="allowed_lateness_seconds"):
        SessionWindowConfig(allowed_lateness_seconds=-1)
    with pytest.raises(ValidationError, match="extra"):
        SessionWindowConfig(gap_minutes=30)
