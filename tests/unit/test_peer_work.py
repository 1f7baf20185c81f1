"""The peer apps' shared per-record work (benchmarks.peers.work) on the in-memory registry."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.peers.work import (
    GRACE_MS,
    OUTPUTS,
    WINDOW_MS,
    WindowAgg,
    WindowKey,
    Work,
    agg_add,
    agg_merge,
    window_start,
)
from schemas.catalog import schema_json
from schemas.serde import ConfluentAvroSerde
from tests.unit.conftest import frame, make_event

TOPICS = {name: f"peer.{name}" for name in OUTPUTS}
RAW = "peer.raw"


@pytest.fixture
def work(registry) -> Work:
    return Work.with_registry(registry, TOPICS)


def _decode(registry, contract: str, value: bytes) -> dict:
    return ConfluentAvroSerde(registry, schema_json(contract)).decode(value)


def test_a_high_value_purchase_is_an_event_an_order_and_an_alert(work, registry, raw_writer):
    event = make_event(amount_minor=60_000, user_id="u00042")
    verdict = work.verdict(b"u00042", frame(raw_writer, event), RAW, 3, 17)
    assert [o.name for o in verdict.outputs] == ["events", "orders", "high_value_alerts"]
    assert {o.key for o in verdict.outputs} == {b"u00042"}
    for output in verdict.outputs:
        decoded = _decode(registry, "clickstream_event", output.value)
        assert decoded["event_id"] == event.event_id and decoded["amount_minor"] == 60_000
    assert verdict.window == (WindowKey("purchase", "EUR"), event.event_time, 60_000)


def test_a_cheap_page_view_is_only_an_event(work, raw_writer):
    event = make_event(event_type="page_view", product_id=None, amount_minor=None, currency=None)
    verdict = work.verdict(b"u00001", frame(raw_writer, event), RAW, 0, 1)
    assert [o.name for o in verdict.outputs] == ["events"]
    assert verdict.window.key == WindowKey("page_view", "")


def test_a_v1_writer_record_resolves(work, registry):
    v1 = ConfluentAvroSerde(registry, schema_json("clickstream_event.v1"), f"{RAW}-value")
    event = make_event()
    record = {k: v for k, v in event._asdict().items() if k != "referrer"}
    assert [o.name for o in work.verdict(b"u00001", v1.encode(record), RAW, 0, 2).outputs] == ["events", "orders"]


def test_a_bot_is_filtered(work, registry, raw_writer):
    bot = make_event(user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)")
    verdict = work.verdict(b"u00001", frame(raw_writer, bot), RAW, 0, 3)
    assert [o.name for o in verdict.outputs] == ["filtered"] and verdict.window is None
    assert _decode(registry, "clickstream_event", verdict.outputs[0].value)["user_agent"] == bot.user_agent


def test_a_bad_magic_byte_is_a_decode_dead_letter(work, registry, raw_writer):
    value = b"\x01" + frame(raw_writer, make_event())[1:]
    verdict = work.verdict(b"k", value, RAW, 2, 40)
    assert [(o.name, o.key) for o in verdict.outputs] == [("dead_letters", f"{RAW}:2:40".encode())]
    letter = _decode(registry, "dead_letter", verdict.outputs[0].value)
    assert (letter["stage"], letter["error_code"]) == ("decode", "bad_magic_byte")
    assert (letter["original"], letter["key"], letter["topic"], letter["partition"], letter["offset"]) == (
        value,
        b"k",
        RAW,
        2,
        40,
    )
    assert verdict.window is None


@pytest.mark.parametrize(
    ("value", "code"),
    [(None, "tombstone"), (b"", "empty_value"), (b"\x00\x00", "truncated_record"), (b"\x00\x00\x00\x03\xe7x", None)],
)
def test_undecodable_records_are_dead_letters(work, registry, value, code):
    (output,) = work.verdict(None, value, RAW, 0, 5).outputs
    letter = _decode(registry, "dead_letter", output.value)
    assert output.name == "dead_letters" and letter["stage"] == "decode"
    assert letter["error_code"] == (code or "unknown_schema_id")


def test_a_missing_user_is_a_validate_dead_letter(work, registry, raw_writer):
    (output,) = work.verdict(b"", frame(raw_writer, make_event(user_id="")), RAW, 1, 9).outputs
    letter = _decode(registry, "dead_letter", output.value)
    assert output.name == "dead_letters" and output.key == f"{RAW}:1:9".encode()
    assert (letter["stage"], letter["error_code"]) == ("validate", "missing_field")
    assert "user_id is empty" in letter["reason"]


def test_now_decides_what_is_in_the_future(work, registry, raw_writer):
    event = make_event()
    value = frame(raw_writer, event)
    (output,) = work.verdict(b"u00001", value, RAW, 0, 1, now=event.event_time - 3_600_000).outputs
    assert _decode(registry, "dead_letter", output.value)["error_code"] == "event_time_in_future"


def test_windows_are_tumbling_minutes_with_five_minutes_of_grace():
    assert (WINDOW_MS, GRACE_MS) == (60_000, 300_000)
    assert window_start(1_717_236_059_999) == 1_717_236_000_000 == window_start(1_717_236_000_000)
    agg = agg_add(agg_add(WindowAgg(), 1999), None)
    assert agg == WindowAgg(2, 1, 1999)
    assert agg_add([2, 1, 1999], 1) == WindowAgg(3, 2, 2000)  # a JSON state store hands back a list
    assert agg_merge(agg, WindowAgg(1, 1, 1)) == WindowAgg(3, 2, 2000)
    assert WindowKey.parse(WindowKey("purchase", "").text()) == WindowKey("purchase", "")


def test_a_window_result_is_a_final_window_metric_pane(work, registry):
    output = work.window_output(WindowKey("purchase", "EUR"), 1_717_236_000_000, [3, 2, 5000])
    assert output.name == "window_metrics" and output.key == b"1717236000000|purchase|unknown|EUR"
    metric = _decode(registry, "window_metric", output.value)
    assert metric["window_end"].timestamp() * 1000 == 1_717_236_060_000
    assert {k: metric[k] for k in ("event_type", "category", "currency", "pane_timing", "pane_index")} == {
        "event_type": "purchase",
        "category": "unknown",
        "currency": "EUR",
        "pane_timing": "ON_TIME",
        "pane_index": 0,
    }
    assert (metric["event_count"], metric["amount_count"], metric["amount_sum_minor"]) == (3, 2, 5000)
    assert metric["amount_avg_minor"] == 2500.0


def test_outputs_are_registered_under_their_topics(registry):
    Work.with_registry(registry, TOPICS)
    assert set(registry._subjects) == {f"{topic}-value" for topic in TOPICS.values()}


def test_every_output_needs_a_topic(registry):
    with pytest.raises(ValueError, match="window_metrics"):
        Work.with_registry(registry, {k: v for k, v in TOPICS.items() if k != "window_metrics"})


def test_the_work_imports_no_beam():
    code = "import sys, benchmarks.peers.work; sys.exit(any(m.startswith('apache_beam') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0
