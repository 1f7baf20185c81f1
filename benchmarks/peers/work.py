"""The per-record work of the pipeline, Beam-free, shared by the peer apps (Quix Streams, Bytewax).

``Work.verdict`` turns one input record (raw Kafka key and value) into the output records to produce: decode
(Confluent Avro, read with the current contract), validate (``schemas.rules``), filter, route (events, orders,
high-value alerts), each output encoded with its contract and registered under ``<topic>-value``. Every input
record ends as exactly one events, filtered or dead_letters record (plus copies in orders/alerts).
The window helpers define the 1-minute event-time tumbling windows per (event_type, currency) and encode a
closed window as a final ``window_metric`` pane. Only ``schemas`` modules that do not import Beam are used.
"""

import datetime as dt
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas.catalog import schema_json
from schemas.registry import ConfluentRegistry, SchemaRegistry
from schemas.rules import ValidationConfig, filter_reason, rejection
from schemas.serde import ConfluentAvroSerde, SerdeError

#: Output name -> the contract its records are encoded with.
CONTRACTS: dict[str, str] = {
    "events": "clickstream_event",
    "orders": "clickstream_event",
    "high_value_alerts": "clickstream_event",
    "filtered": "clickstream_event",
    "dead_letters": "dead_letter",
    "window_metrics": "window_metric",
}
OUTPUTS: tuple[str, ...] = tuple(CONTRACTS)
ORDER_TYPES = frozenset({"checkout", "purchase"})
HIGH_VALUE_MINOR = 50_000

WINDOW_MS = 60_000
GRACE_MS = 300_000
UNKNOWN_CATEGORY = "unknown"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def epoch_ms(value: dt.datetime | int) -> int:
    """Exact epoch millis of a decoded ``timestamp-millis`` (fastavro returns an aware datetime)."""
    if isinstance(value, int):
        return value
    return ((value if value.tzinfo else value.replace(tzinfo=dt.UTC)) - _EPOCH) // _ONE_MS


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded clickstream event: the attributes ``schemas.rules`` reads (``event_time`` in epoch ms)."""

    event_id: str
    event_type: str
    user_id: str
    session_hint: str | None
    product_id: str | None
    amount_minor: int | None
    currency: str | None
    event_time: int
    device: str
    country: str
    user_agent: str | None
    referrer: str | None
    properties: Mapping[str, str]


class Output(NamedTuple):
    """One record to produce: output name (a key of the topics mapping), Kafka key, Confluent-framed value."""

    name: str
    key: bytes | None
    value: bytes


class WindowKey(NamedTuple):
    event_type: str
    currency: str

    def text(self) -> str:
        """A string form, for frameworks whose keys must be serializable (Quix's group_by)."""
        return f"{self.event_type}|{self.currency}"

    @classmethod
    def parse(cls, text: str) -> "WindowKey":
        event_type, _, currency = text.partition("|")
        return cls(event_type, currency)


class WindowInput(NamedTuple):
    """What one valid event contributes to its window."""

    key: WindowKey
    event_time: int
    amount_minor: int | None


class WindowAgg(NamedTuple):
    event_count: int = 0
    amount_count: int = 0
    amount_sum_minor: int = 0


class Verdict(NamedTuple):
    outputs: list[Output]
    window: WindowInput | None  # None unless the event is valid (only valid events are windowed)


def window_start(event_time_ms: int) -> int:
    return event_time_ms - event_time_ms % WINDOW_MS


def agg_add(agg: Sequence[int], amount_minor: int | None) -> WindowAgg:
    """``agg`` plus one event (``agg`` may be a WindowAgg or a list, as a JSON state store returns it)."""
    count, amount_count, amount_sum = agg
    if amount_minor is None:
        return WindowAgg(count + 1, amount_count, amount_sum)
    return WindowAgg(count + 1, amount_count + 1, amount_sum + amount_minor)


def agg_merge(a: Sequence[int], b: Sequence[int]) -> WindowAgg:
    return WindowAgg(a[0] + b[0], a[1] + b[1], a[2] + b[2])


class Work:
    """The registry client and one serde per output, created (and registered) once."""

    def __init__(self, registry_url: str, topics: Mapping[str, str]) -> None:
        self._setup(ConfluentRegistry(registry_url), topics)

    @classmethod
    def with_registry(cls, registry: SchemaRegistry, topics: Mapping[str, str]) -> "Work":
        work = cls.__new__(cls)
        work._setup(registry, topics)
        return work

    def _setup(self, registry: SchemaRegistry, topics: Mapping[str, str]) -> None:
        missing = [name for name in OUTPUTS if name not in topics]
        if missing:
            raise ValueError(f"no topic for output(s) {', '.join(missing)}; expected {', '.join(OUTPUTS)}")
        self.topics: dict[str, str] = {name: topics[name] for name in OUTPUTS}
        self._reader = ConfluentAvroSerde(registry, schema_json("clickstream_event"))
        self._writers = {
            name: ConfluentAvroSerde(registry, schema_json(CONTRACTS[name]), f"{self.topics[name]}-value")
            for name in OUTPUTS
        }
        for writer in self._writers.values():
            writer.schema_id()  # register now: an unreachable registry fails at start, not on the first record
        self._config = ValidationConfig()
        self._bots = re.compile(self._config.bot_user_agent_pattern)

    def verdict(
        self,
        key: bytes | None,
        value: bytes | None,
        topic: str | None,
        partition: int | None,
        offset: int | None,
        now: int | None = None,
    ) -> Verdict:
        """The records to produce for one input record and, for a valid event, its window input."""
        where = (key, value, topic, partition, offset)
        if value is None:
            return self._dead(*where, "decode", "tombstone", "null value (a tombstone): raw events are never deleted")
        if not value:
            return self._dead(*where, "decode", "empty_value", "empty value: no Confluent header, no event")
        try:
            record: dict[str, Any] = self._reader.decode(value)
        except SerdeError as err:
            return self._dead(*where, "decode", getattr(err, "code", "serde_error"), str(err))
        record["event_time"] = epoch_ms(record["event_time"])
        event = Event(**record)
        rejected = rejection(event, self._config, now_ms() if now is None else now)
        if rejected:
            code, reason = rejected
            return self._dead(*where, "validate", code, f"event {event.event_id}: {reason}")
        user = event.user_id.encode()
        if filter_reason(event, self._config, self._bots):
            return Verdict([Output("filtered", user, self._writers["filtered"].encode(record))], None)
        outputs = [Output("events", user, self._writers["events"].encode(record))]
        if event.event_type in ORDER_TYPES:
            outputs.append(Output("orders", user, self._writers["orders"].encode(record)))
        if (event.amount_minor or 0) >= HIGH_VALUE_MINOR:
            outputs.append(Output("high_value_alerts", user, self._writers["high_value_alerts"].encode(record)))
        window = WindowInput(WindowKey(event.event_type, event.currency or ""), event.event_time, event.amount_minor)
        return Verdict(outputs, window)

    def _dead(
        self,
        key: bytes | None,
        value: bytes | None,
        topic: str | None,
        partition: int | None,
        offset: int | None,
        stage: str,
        code: str,
        reason: str,
    ) -> Verdict:
        letter = {
            "original": value or b"",
            "key": key,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "stage": stage,
            "error_code": code,
            "reason": reason,
            "error_time": now_ms(),
        }
        dl_key = f"{topic}:{partition}:{offset}".encode()
        return Verdict([Output("dead_letters", dl_key, self._writers["dead_letters"].encode(letter))], None)

    def window_output(self, key: WindowKey, start_ms: int, agg: Sequence[int]) -> Output:
        """A closed window as the final (ON_TIME) ``window_metric`` pane."""
        count, amount_count, amount_sum = agg
        metric = {
            "window_start": start_ms,
            "window_end": start_ms + WINDOW_MS,
            "event_type": key.event_type,
            "category": UNKNOWN_CATEGORY,
            "currency": key.currency,
            "event_count": count,
            "amount_count": amount_count,
            "amount_sum_minor": amount_sum,
            "amount_avg_minor": amount_sum / amount_count if amount_count else None,
            "amount_p50_minor": None,
            "amount_p95_minor": None,
            "amount_p99_minor": None,
            "pane_timing": "ON_TIME",
            "pane_index": 0,
        }
        out_key = f"{start_ms}|{key.event_type}|{UNKNOWN_CATEGORY}|{key.currency}".encode()
        return Output("window_metrics", out_key, self._writers["window_metrics"].encode(metric))
