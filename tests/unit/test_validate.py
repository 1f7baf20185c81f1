import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from pydantic import ValidationError

from schemas.records import Provenance, SourcedEvent
from schemas.rules import ValidationConfig
from tests.unit.conftest import RAW_TOPIC, batch_options, kafka_record, make_event
from transforms.stage_metrics import NAMESPACE
from transforms.validate import ValidateEvents

NOW_MS = int(time.time() * 1000)

INVALID = {
    "empty_user": (make_event(event_id="i1", user_id=" "), "missing_field"),
    "bad_country": (make_event(event_id="i2", country="Germany"), "invalid_country"),
    "purchase_without_amount": (make_event(event_id="i3", amount_minor=None, currency=None), "missing_field"),
    "view_without_product": (make_event(event_id="i4", event_type="product_view", product_id=None), "missing_field"),
    "negative_amount": (make_event(event_id="i5", amount_minor=-1), "amount_out_of_range"),
    "bad_currency": (make_event(event_id="i6", currency="euro"), "invalid_currency"),
    "future": (make_event(event_id="i7", event_time=NOW_MS + 3_600_000), "event_time_in_future"),
    "ancient": (make_event(event_id="i8", event_time=NOW_MS - 30 * 86_400_000), "event_time_too_old"),
}
FILTERED = [
    make_event(event_id="f1", user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)"),
    make_event(event_id="f2", user_id="test-u1"),
    make_event(event_id="f3", properties={"is_test": "true"}),
]
VALID = [
    make_event(event_id="v1"),
    make_event(event_id="v2", event_type="page_view", product_id=None, amount_minor=None, currency=None),
    make_event(event_id="v3", event_time=NOW_MS + 60_000),  # small client skew is fine
]


def _sourced(events):
    return [SourcedEvent(e, kafka_record(e.event_id.encode(), offset=i)) for i, e in enumerate(events)]


def test_rules_reject_filter_and_keep():
    inputs = _sourced(VALID + [e for e, _ in INVALID.values()] + FILTERED)
    with TestPipeline(options=batch_options()) as p:
        result = p | beam.Create(inputs) | ValidateEvents(ValidationConfig())
        offsets = {s.event.event_id: s.source.offset for s in inputs}
        fate = beam.Map(lambda t: (t.record.event_id, t.provenance))
        assert_that(
            result.valid | "Valid" >> fate,
            equal_to([(i, Provenance(RAW_TOPIC, 0, offsets[i], offsets[i], 0, 1)) for i in ("v1", "v2", "v3")]),
            label="valid",
        )
        assert_that(
            result.filtered | "Filtered" >> fate,
            equal_to([(i, Provenance(RAW_TOPIC, 0, offsets[i], offsets[i], 0, 1)) for i in ("f1", "f2", "f3")]),
            label="filtered",
        )
        assert_that(
            result.dead_letters
            | beam.Map(
                lambda d: (d.record.original.decode(), d.record.error_code, d.record.stage, d.provenance.offset)
            ),
            equal_to([(e.event_id, code, "validate", offsets[e.event_id]) for e, code in INVALID.values()]),
            label="dead_letters",
        )
    counters = {
        m.key.metric.name: m.committed
        for m in p.result.metrics().query()["counters"]
        if m.key.metric.namespace == NAMESPACE
    }
    assert counters["validate_filtered"] == 3
    assert counters["validate_filtered_bot"] == 1
    assert counters["validate_filtered_test_user"] == 2
    assert counters["validate_valid"] == 3
    assert counters["validate_dead_letter"] == len(INVALID)


def test_config_is_checked_at_startup():
    with pytest.raises(ValidationError, match="bot_user_agent_pattern"):
        ValidationConfig(bot_user_agent_pattern="([unclosed")
    with pytest.raises(ValidationError, match="max_future_skew_seconds"):
        ValidationConfig(max_future_skew_seconds=-1)
