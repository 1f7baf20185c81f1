import json
import time
import typing

import pytest

from ingestion.contract import EventIn, Rejection, Unparseable, normalize
from schemas.catalog import schema_json
from schemas.records import ClickEvent

NOW = int(time.time() * 1000)


def _raw(**overrides):
    event = {
        "event_id": "e1",
        "event_type": "purchase",
        "user_id": "u1",
        "product_id": "p1",
        "amount_minor": 1299,
        "currency": "eur",
        "event_time": NOW - 1000,
        "device": "mobile",
        "country": "de",
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def _avro_fields():
    return {f["name"]: f for f in schema_json("clickstream_event")["fields"]}


def test_the_three_click_event_types_are_one_contract():
    """The .avsc, the pipeline's NamedTuple and the ingestion's pydantic model: same fields, order, nullability
    (the one place that proves it)."""
    avro = _avro_fields()
    record_hints = typing.get_type_hints(ClickEvent)
    assert list(EventIn.model_fields) == list(avro) == list(ClickEvent._fields)
    for name, field in avro.items():
        nullable = isinstance(field["type"], list) and "null" in field["type"]
        assert nullable == (type(None) in typing.get_args(EventIn.model_fields[name].annotation)), name
        assert nullable == (type(None) in typing.get_args(record_hints[name])), name


@pytest.mark.parametrize("field", ["event_type", "device"])
def test_enum_symbols_match_the_avro_contract(field):
    symbols = _avro_fields()[field]["type"]["symbols"]
    assert list(typing.get_args(EventIn.model_fields[field].annotation)) == symbols


def test_normalisation_of_source_dialects():
    event = normalize(_raw(event_type="Add-To-Cart", event_time="2026-01-01T00:00:00Z", device="Smart TV"), now_ms=NOW)
    assert isinstance(event, Rejection)  # 2026-01-01 is older than the 7-day limit relative to NOW
    event = normalize(
        _raw(event_type="Add-To-Cart", event_id=..., device="Smart TV", properties={"qty": 2}), now_ms=NOW
    )
    assert isinstance(event, ClickEvent)
    assert (event.event_type, event.device, event.country, event.currency) == ("add_to_cart", "other", "DE", "EUR")
    assert event.properties == {"qty": "2"}
    assert len(event.event_id) == 36  # assigned when the source has none
    iso = normalize(_raw(event_time="2026-11-25T10:00:00.250+01:00"), now_ms=1_795_600_000_000)
    assert iso.event_time == 1_795_597_200_250


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        (_raw(event_type="refund"), "schema_violation", "event_type: Input should be"),
        (_raw(user_id=...), "schema_violation", "user_id: Field required"),
        (_raw(amount_minor="twelve"), "schema_violation", "amount_minor: Input should be a valid integer"),
        (_raw(colour="red"), "schema_violation", "colour: Extra inputs are not permitted"),
        (_raw(amount_minor=None), "missing_field", "purchase event needs amount_minor"),
        (_raw(country="Germany"), "invalid_country", "country 'GERMANY'"),
        (_raw(event_time=NOW + 3_600_000), "event_time_in_future", "ahead of the clock"),
        ([1, 2], "not_an_object", "got list"),
        (Unparseable("{oops", "line 3: Expecting property name"), "invalid_json", "line 3"),
    ],
)
def test_rejections_carry_a_precise_reason(raw, code, reason):
    result = normalize(raw, now_ms=NOW)
    assert isinstance(result, Rejection)
    assert result.code == code
    assert reason in result.reason


def test_several_errors_are_summarised():
    result = normalize({"event_type": "nope"}, now_ms=NOW)
    assert result.code == "schema_violation"
    assert "more)" in result.reason
    json.dumps(result.model_dump())  # serialisable for HTTP responses and rejects files
