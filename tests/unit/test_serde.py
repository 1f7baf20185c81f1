"""The Confluent Avro serde: round trips, framing, caching, and one stable error code per failure.

The decode stage turns every ``SerdeError`` into a dead letter keyed by ``.code``; any other
exception would fail the bundle and, on Flink, restart the job on the same poison record. So the
malformed cases below assert the exact subclass, and the fuzz tests assert that nothing else escapes.
"""

import json
import pickle
import random
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from apache_beam.internal import pickler as beam_pickler

from schemas import catalog
from schemas.records import (
    ClickEvent,
    DeadLetter,
    EnrichedEvent,
    Product,
    SessionSummary,
    UserProfile,
    WindowMetric,
    from_avro,
    to_avro,
)
from schemas.registry import ConfluentRegistry, InMemoryRegistry, SchemaNotFoundError
from schemas.secrets import EnvSecret
from schemas.serde import (
    MAGIC_BYTE,
    BadMagicByteError,
    ConfluentAvroSerde,
    EncodeError,
    MalformedAvroError,
    RegistryUnavailableError,
    SchemaResolutionError,
    SerdeError,
    TruncatedRecordError,
    UnknownSchemaIdError,
)
from tests.unit.conftest import CLICK

PAGE_VIEW = ClickEvent(
    event_id="0b7e3c52-1111-4d2a-8f00-5a6b7c8d9e0f",
    event_type="page_view",
    user_id="u-000043",
    session_hint=None,
    product_id=None,
    amount_minor=None,
    currency=None,
    event_time=1_717_236_001_999,
    device="desktop",
    country="FR",
    user_agent=None,
    referrer=None,
    properties={},
)
USER = UserProfile(user_id="u-000042", segment="returning", loyalty_tier="gold", signup_country="DE")
PRODUCT = Product(product_id="sku-1001", category="shoes", brand="Acme", price_minor=12999, currency="EUR")

#: (contract, record) pairs covering every Avro contract, with optional fields both set and empty.
ROUND_TRIPS: list[tuple[str, tuple]] = [
    ("clickstream_event", CLICK),
    ("clickstream_event", PAGE_VIEW),
    ("enriched_event", EnrichedEvent(CLICK, USER, PRODUCT, "enriched", [])),
    ("enriched_event", EnrichedEvent(PAGE_VIEW, None, None, "not_enriched", ["user_lookup_timeout", "no_product"])),
    (
        "window_metric",
        WindowMetric(
            1_717_236_000_000, 1_717_236_060_000, "purchase", "shoes", "EUR", 42, 40, 519_960,
            12999.0, 11999.5, 24999.25, 29999.0, "ON_TIME", 0,
        ),
    ),
    (
        "window_metric",
        WindowMetric(
            1_717_236_000_000, 1_717_236_060_000, "page_view", "unknown", "", 7, 0, 0,
            None, None, None, None, "EARLY", 0,
        ),
    ),
    (
        "session_summary",
        SessionSummary(
            "u-000042", 1_717_236_000_123, 1_717_236_900_000, 899_877, 17, 4, 2, {"EUR": 25998, "USD": 1500},
            True, "LATE", 2,
        ),
    ),
    (
        "dead_letter",
        DeadLetter(
            b"\x01\xff\xfenot avro", None, "clickstream.events", 0, 99, "decode", "bad_magic_byte",
            "magic byte is 0x01, expected 0x00", 1_717_236_001_000,
        ),
    ),
]  # fmt: skip

CONTRACT_TYPES = {
    "clickstream_event": ClickEvent,
    "enriched_event": EnrichedEvent,
    "window_metric": WindowMetric,
    "session_summary": SessionSummary,
    "dead_letter": DeadLetter,
}


class _CountingRegistry:
    """A registry double that counts calls, hands out large ids (so byte order matters) and can fail."""

    def __init__(self, first_id: int = 0x01020304) -> None:
        self._next_id = first_id
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self.register_calls = 0
        self.lookup_calls = 0
        self.fail_with: Exception | None = None

    def register(self, subject: str, schema_str: str) -> int:
        self.register_calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        if schema_str not in self._ids:
            self._ids[schema_str] = self._next_id
            self._schemas[self._next_id] = schema_str
            self._next_id += 1
        return self._ids[schema_str]

    def schema_by_id(self, schema_id: int) -> str:
        self.lookup_calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        try:
            return self._schemas[schema_id]
        except KeyError:
            raise SchemaNotFoundError(f"schema id {schema_id} is not registered") from None


def _serde(registry: Any, contract: str = "clickstream_event", subject: str | None = "clickstream.events-value"):
    return ConfluentAvroSerde(registry, catalog.schema_json(contract), subject)


@pytest.fixture
def click_serde() -> ConfluentAvroSerde:
    return _serde(InMemoryRegistry())


@pytest.fixture
def framed_click(click_serde) -> bytes:
    return click_serde.encode(to_avro(CLICK))


# --- round trips and framing -------------------------------------------------------------------


def test_record_fields_match_their_contracts():
    for contract, record_type in CONTRACT_TYPES.items():
        assert [f["name"] for f in catalog.schema_json(contract)["fields"]] == list(record_type._fields), contract


@pytest.mark.parametrize(("contract", "record"), ROUND_TRIPS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(ROUND_TRIPS)])
def test_round_trip(contract, record):
    serde = _serde(InMemoryRegistry(), contract, f"{contract}-value")
    decoded = from_avro(type(record), serde.decode(serde.encode(to_avro(record))))
    assert decoded == record
    assert type(decoded) is type(record)
    if isinstance(record, EnrichedEvent):
        assert type(decoded.event) is ClickEvent
        assert record.user is None or type(decoded.user) is UserProfile
        assert record.product is None or type(decoded.product) is Product


@pytest.mark.parametrize(
    "event_time",
    [
        0,
        1_577_836_800_000,  # 2020-01-01
        1_717_236_000_123,
        1_717_236_000_999,
        2_147_483_647_999,  # 2038-01-19T03:14:07.999Z, just below 2**31 s
        pytest.param(1_079_807_155_518, id="2004-03-20T18:25:55.518"),
        pytest.param(2_150_257_996_292, id="2038-02-20T05:53:16.292"),
        pytest.param(-4_095, id="1969-12-31T23:59:55.905"),
    ],
)
def test_event_time_survives_exactly(click_serde, event_time):
    record = CLICK._replace(event_time=event_time)
    assert from_avro(ClickEvent, click_serde.decode(click_serde.encode(to_avro(record)))).event_time == event_time


def test_header_is_magic_byte_then_big_endian_schema_id():
    registry = _CountingRegistry(first_id=0x01020304)
    data = _serde(registry).encode(to_avro(CLICK))
    assert data[0] == MAGIC_BYTE == 0
    assert data[1:5] == b"\x01\x02\x03\x04"
    assert struct.unpack(">I", data[1:5])[0] == _serde(registry).schema_id() == 0x01020304


def test_encoded_schema_is_the_catalog_text():
    registry = InMemoryRegistry()
    data = _serde(registry, "enriched_event").encode(to_avro(EnrichedEvent(CLICK, USER, PRODUCT, "enriched", [])))
    assert registry.schema_by_id(struct.unpack(">I", data[1:5])[0]) == catalog.canonical(
        catalog.schema_json("enriched_event")
    )


# --- caching -----------------------------------------------------------------------------------


def test_schema_is_registered_once_and_cached():
    registry = _CountingRegistry()
    serde = _serde(registry)
    assert registry.register_calls == 0, "registration must be lazy (the constructor runs on the launcher)"
    ids = {serde.encode(to_avro(r))[1:5] for r in [CLICK, PAGE_VIEW] * 50}
    assert len(ids) == 1
    assert registry.register_calls == 1


def test_writer_schemas_are_fetched_once_per_id():
    registry = _CountingRegistry()
    v1_frames = [_serde(registry, "clickstream_event.v1").encode(to_avro(CLICK)) for _ in range(3)]
    v2_frames = [_serde(registry, "clickstream_event.v2").encode(to_avro(CLICK)) for _ in range(3)]
    reader = _serde(registry, subject=None)
    for _ in range(20):
        for frame in v1_frames + v2_frames:
            reader.decode(frame)
    assert registry.lookup_calls == 2


def test_failed_lookups_are_not_cached():
    registry = _CountingRegistry()
    frame = _serde(registry).encode(to_avro(CLICK))
    reader = _serde(registry, subject=None)
    registry.fail_with = ConnectionError("registry down")
    with pytest.raises(RegistryUnavailableError):
        reader.decode(frame)
    registry.fail_with = None
    assert from_avro(ClickEvent, reader.decode(frame)) == CLICK


# --- malformed input: one precise error per case -----------------------------------------------


def _assert_serde_error(serde: ConfluentAvroSerde, data: bytes, error: type, code: str) -> SerdeError:
    with pytest.raises(SerdeError) as info:
        serde.decode(data)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert info.value.code == code
    return info.value


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x01"], ids=len)
def test_short_input_is_truncated(click_serde, data):
    _assert_serde_error(click_serde, data, TruncatedRecordError, "truncated_record")


@pytest.mark.parametrize("first", [0x01, 0xFF, ord("{")], ids=hex)
def test_wrong_magic_byte(click_serde, framed_click, first):
    _assert_serde_error(click_serde, bytes([first]) + framed_click[1:], BadMagicByteError, "bad_magic_byte")


def test_json_payload_is_bad_magic_byte(click_serde):
    data = json.dumps(to_avro(CLICK)).encode()
    _assert_serde_error(click_serde, data, BadMagicByteError, "bad_magic_byte")


def test_unknown_schema_id(click_serde, framed_click):
    data = struct.pack(">BI", 0, 999) + framed_click[5:]
    err = _assert_serde_error(click_serde, data, UnknownSchemaIdError, "unknown_schema_id")
    assert "999" in str(err)


def _truncations(frame: bytes) -> dict[str, int]:
    """Cut points that end the payload at or inside a string, never inside a varint."""
    ua = CLICK.user_agent.encode()
    ua_start = frame.index(ua)
    return {"header_only": 5, "inside_user_agent": ua_start + len(ua) // 2, "before_map_end": len(frame) - 1}


@pytest.mark.parametrize("where", ["header_only", "inside_user_agent", "before_map_end"])
def test_truncated_avro_payload(click_serde, framed_click, where):
    cut = _truncations(framed_click)[where]
    _assert_serde_error(click_serde, framed_click[:cut], TruncatedRecordError, "truncated_record")


def test_every_truncation_is_a_serde_error(click_serde, framed_click):
    for cut in range(len(framed_click)):
        with pytest.raises(SerdeError):
            click_serde.decode(framed_click[:cut])


def test_every_truncation_is_reported_as_truncated(click_serde, framed_click):
    codes = {}
    for cut in range(5, len(framed_click)):
        try:
            click_serde.decode(framed_click[:cut])
        except SerdeError as err:
            codes[cut] = err.code
    wrong = {cut: code for cut, code in codes.items() if code != "truncated_record"}
    assert not wrong, f"cut points with the wrong code: {wrong}"


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff\xff", b"trailing"], ids=len)
def test_trailing_garbage(click_serde, framed_click, garbage):
    err = _assert_serde_error(click_serde, framed_click + garbage, MalformedAvroError, "malformed_avro")
    assert f"{len(garbage)} unread bytes" in str(err)


def test_writer_schema_that_is_not_avro(framed_click):
    registry = _CountingRegistry(first_id=7)
    registry.register("broken-value", '{"type": "record", "name": "Broken"}')
    data = struct.pack(">BI", 0, 7) + framed_click[5:]
    _assert_serde_error(_serde(registry, subject=None), data, SchemaResolutionError, "schema_resolution_failed")


def _fuzz(serde: ConfluentAvroSerde, payloads: list[bytes]) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    for data in payloads:
        try:
            result = serde.decode(data)
        except SerdeError as err:
            outcome = err.code
        except Exception as err:  # the point of the test: report which payload escaped
            pytest.fail(f"{type(err).__name__} escaped decode() for {data!r}: {err}")
        else:
            assert isinstance(result, dict)
            outcome = "decoded"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def test_random_garbage_after_a_valid_header_only_raises_serde_errors(click_serde, framed_click):
    rng = random.Random(20240601)
    header = framed_click[:5]
    payloads = [header + rng.randbytes(rng.randrange(0, 160)) for _ in range(500)]
    outcomes = _fuzz(click_serde, payloads)
    assert set(outcomes) <= {"decoded", "truncated_record", "malformed_avro", "schema_resolution_failed"}
    assert sum(v for k, v in outcomes.items() if k != "decoded") >= 400, outcomes


def test_corrupted_records_only_raise_serde_errors(click_serde, framed_click):
    rng = random.Random(7)
    payloads = []
    for _ in range(500):
        body = bytearray(framed_click[5:])
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        payloads.append(framed_click[:5] + bytes(body))
    outcomes = _fuzz(click_serde, payloads)
    assert outcomes.get("decoded", 0) <= len(payloads) // 2, outcomes


@pytest.mark.parametrize(
    "failure",
    [ConnectionError("connection refused"), TimeoutError("read timed out"), RuntimeError("HTTP 503")],
    ids=repr,
)
def test_registry_failure_is_registry_unavailable_not_a_record_fault(framed_click, failure):
    """A registry that cannot answer is infrastructure: never a SerdeError, so never a dead letter."""
    registry = _CountingRegistry()
    registry.fail_with = failure
    data = struct.pack(">BI", 0, 1) + framed_click[5:]
    with pytest.raises(RegistryUnavailableError) as info:
        _serde(registry, subject=None).decode(data)
    assert not isinstance(info.value, SerdeError)
    assert info.value.__cause__ is failure


def test_unknown_schema_id_is_asked_once_not_per_record(framed_click):
    registry = _CountingRegistry()
    reader = _serde(registry, subject=None)
    data = struct.pack(">BI", 0, 4242) + framed_click[5:]
    for _ in range(50):
        _assert_serde_error(reader, data, UnknownSchemaIdError, "unknown_schema_id")
    assert registry.lookup_calls == 1


def test_registration_failure_is_registry_unavailable():
    registry = _CountingRegistry()
    registry.fail_with = ConnectionError("registry down")
    with pytest.raises(RegistryUnavailableError):
        _serde(registry).encode(to_avro(CLICK))


def test_encode_errors():
    serde = _serde(InMemoryRegistry())
    with pytest.raises(EncodeError) as info:
        serde.encode(to_avro(CLICK._replace(event_type="refund")))
    assert info.value.code == "encode_failed"
    with pytest.raises(EncodeError):
        serde.encode({"event_id": "missing everything else"})
    with pytest.raises(EncodeError, match="subject"):
        _serde(InMemoryRegistry(), subject=None).encode(to_avro(CLICK))


# --- ConfluentRegistry against a local stub of the REST API ------------------------------------


class _StubRegistryHandler(BaseHTTPRequestHandler):
    """Just enough of the Confluent REST API: ids 1..n exist, 401 is an auth failure, others are 404."""

    schemas: dict[int, str] = {}

    def _reply(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = self.path.split("?")[0]
        schema_id = int(path.rsplit("/", 1)[-1]) if path.startswith("/schemas/ids/") else -1
        if schema_id in self.schemas:
            self._reply(200, {"schema": self.schemas[schema_id]})
        elif schema_id == 401:
            self._reply(401, {"error_code": 401, "message": "Unauthorized"})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        schema_id = next((i for i, s in self.schemas.items() if s == body["schema"]), len(self.schemas) + 1)
        self.schemas[schema_id] = body["schema"]
        self._reply(200, {"id": schema_id})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry_url():
    try:
        import confluent_kafka.schema_registry  # noqa: F401
    except ImportError as err:
        pytest.fail(f"ConfluentRegistry cannot work here, install confluent-kafka[schemaregistry] (setup.py): {err!r}")
    handler = type("Handler", (_StubRegistryHandler,), {"schemas": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_confluent_registry_round_trip(registry_url):
    serde = _serde(ConfluentRegistry(registry_url))
    assert from_avro(ClickEvent, serde.decode(serde.encode(to_avro(CLICK)))) == CLICK


def test_confluent_registry_404_is_unknown_schema_id(registry_url, framed_click):
    data = struct.pack(">BI", 0, 999) + framed_click[5:]
    _assert_serde_error(_serde(ConfluentRegistry(registry_url)), data, UnknownSchemaIdError, "unknown_schema_id")


def test_confluent_registry_non_404_is_registry_unavailable(registry_url, framed_click):
    data = struct.pack(">BI", 0, 401) + framed_click[5:]
    serde = _serde(ConfluentRegistry(registry_url))
    with pytest.raises(RegistryUnavailableError) as info:
        serde.decode(data)
    assert getattr(info.value.__cause__, "http_status_code", None) == 401, repr(info.value.__cause__)


def test_confluent_registry_unreachable_is_registry_unavailable(framed_click):
    with pytest.raises(RegistryUnavailableError):
        ConfluentRegistry("http://127.0.0.1:9").schema_by_id(1)


# --- pickling: Beam ships the serde inside DoFns to every worker ------------------------------


def test_confluent_registry_pickles_before_and_after_use(registry_url, monkeypatch):
    monkeypatch.setenv("IT_REGISTRY_AUTH", "user:s3cret-in-pickle")
    registry = ConfluentRegistry(registry_url, basic_auth=EnvSecret("IT_REGISTRY_AUTH"))
    fresh = pickle.loads(pickle.dumps(registry))
    schema_id = registry.register(
        "clickstream.events-value", catalog.canonical(catalog.schema_json("clickstream_event"))
    )
    assert fresh.schema_by_id(schema_id) == catalog.canonical(catalog.schema_json("clickstream_event"))
    used = pickle.loads(pickle.dumps(registry))  # the live HTTP client holds locks and sockets
    assert b"s3cret-in-pickle" not in pickle.dumps(registry) and "s3cret" not in repr(registry)
    assert used.schema_by_id(schema_id) == catalog.canonical(catalog.schema_json("clickstream_event"))


def test_confluent_registry_pickles_without_a_reachable_registry():
    registry = pickle.loads(pickle.dumps(ConfluentRegistry("http://registry.invalid:8081")))
    assert isinstance(registry, ConfluentRegistry)


@pytest.mark.parametrize("dumps,loads", [(pickle.dumps, pickle.loads), (beam_pickler.dumps, beam_pickler.loads)])
def test_serde_pickles_and_still_decodes(dumps, loads):
    registry = InMemoryRegistry()
    producer = _serde(registry)
    frames = [producer.encode(to_avro(r)) for r in (CLICK, PAGE_VIEW)]
    consumer = _serde(registry, subject=None)
    consumer.decode(frames[0])  # fill the writer-schema cache before shipping
    for original in (producer, consumer):
        shipped = loads(dumps(original))
        assert [from_avro(ClickEvent, shipped.decode(f)) for f in frames] == [CLICK, PAGE_VIEW]
    assert loads(dumps(producer)).encode(to_avro(CLICK)) == frames[0]


def test_serde_with_confluent_registry_pickles_after_use(registry_url):
    serde = _serde(ConfluentRegistry(registry_url))
    frame = serde.encode(to_avro(CLICK))
    serde.decode(frame)
    shipped = pickle.loads(pickle.dumps(serde))
    assert from_avro(ClickEvent, shipped.decode(frame)) == CLICK
