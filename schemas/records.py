"""Typed elements that flow through the pipeline, each mirroring one Avro contract.

They are ``NamedTuple`` classes registered with Beam's ``RowCoder``: a schema-aware, deterministic
binary coder, so shuffles and Flink state never fall back to pickling (see
``benchmarks/coders.py`` for the size and speed difference). Field names equal the Avro field
names; timestamps are ``int`` epoch milliseconds inside the pipeline.
"""

import datetime as dt
import functools
import typing
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import apache_beam as beam


class KafkaRecord(NamedTuple):
    """A record as read at the pipeline's input edge (KafkaIO with metadata, or a test source)."""

    key: Optional[bytes]
    value: Optional[bytes]  # None: a tombstone (dead-lettered by the decode stage)
    topic: Optional[str]
    partition: Optional[int]
    offset: Optional[int]
    #: The reader's position before this record: lower than ``offset`` when the offsets between hold no
    #: record (compaction, transaction markers). None means ``offset``.
    covers_from: Optional[int] = None
    #: The Kafka timestamp (epoch ms): where end-to-end latency is measured from.
    timestamp_ms: Optional[int] = None


class Provenance(NamedTuple):
    """The input record an element derives from, and which of that record's per-record outputs it is.

    Written outputs hand their provenance to the offset committer (``kafkaio.commit``), which commits past
    ``offset`` once all ``parts`` outputs of the record are acknowledged by Kafka. Committing past it also
    commits ``[covers_from, offset)``.
    """

    topic: str
    partition: int
    covers_from: int
    offset: int
    part: int
    parts: int
    #: The input record's Kafka timestamp (epoch ms), for the sinks' end-to-end latency.
    input_timestamp_ms: Optional[int] = None

    @classmethod
    def of(cls, record: KafkaRecord) -> Optional["Provenance"]:
        """The single output of ``record`` (None for a record that did not come from Kafka)."""
        if record.topic is None or record.partition is None or record.offset is None:
            return None
        covers_from = record.offset if record.covers_from is None else record.covers_from
        return cls(record.topic, record.partition, covers_from, record.offset, 0, 1, record.timestamp_ms)

    @staticmethod
    def split(provenance: Optional["Provenance"], part: int, parts: int) -> Optional["Provenance"]:
        """Output ``part`` of ``parts`` that the single output ``provenance`` fans out into."""
        return provenance._replace(part=part, parts=parts) if provenance is not None else None


class OutputRecord(NamedTuple):
    """A record for an output edge: the Kafka key, the Confluent-framed Avro value, and (for per-record
    outputs) the input record it completes."""

    key: Optional[bytes]
    value: bytes
    provenance: Optional[Provenance] = None


class ClickEvent(NamedTuple):
    event_id: str
    event_type: str
    user_id: str
    session_hint: Optional[str]
    product_id: Optional[str]
    amount_minor: Optional[int]
    currency: Optional[str]
    event_time: int
    device: str
    country: str
    user_agent: Optional[str]
    referrer: Optional[str]
    properties: Mapping[str, str]


class UserProfile(NamedTuple):
    user_id: str
    segment: str
    loyalty_tier: str
    signup_country: str


class Product(NamedTuple):
    product_id: str
    category: str
    brand: str
    price_minor: int
    currency: str


class EnrichedEvent(NamedTuple):
    event: ClickEvent
    user: Optional[UserProfile]
    product: Optional[Product]
    enrichment_status: str
    enrichment_errors: Sequence[str]


class WindowMetric(NamedTuple):
    window_start: int
    window_end: int
    event_type: str
    category: str
    currency: str
    event_count: int
    amount_count: int
    amount_sum_minor: int
    amount_avg_minor: Optional[float]
    amount_p50_minor: Optional[float]
    amount_p95_minor: Optional[float]
    amount_p99_minor: Optional[float]
    pane_timing: str
    pane_index: int


class SessionSummary(NamedTuple):
    user_id: str
    session_start: int
    session_end: int
    duration_ms: int
    event_count: int
    distinct_products: int
    purchase_count: int
    purchase_totals_minor: Mapping[str, int]
    converted: bool
    pane_timing: str
    pane_index: int


class DeadLetter(NamedTuple):
    original: bytes
    key: Optional[bytes]
    topic: Optional[str]
    partition: Optional[int]
    offset: Optional[int]
    stage: str
    error_code: str
    reason: str
    error_time: int


RECORD_TYPES: tuple[type, ...] = (
    KafkaRecord,
    Provenance,
    OutputRecord,
    ClickEvent,
    UserProfile,
    Product,
    EnrichedEvent,
    WindowMetric,
    SessionSummary,
    DeadLetter,
)

for _record_type in RECORD_TYPES:
    beam.coders.registry.register_coder(_record_type, beam.coders.RowCoder)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)


def epoch_millis(value: dt.datetime) -> int:
    """Exact epoch millis (integer arithmetic: ``timestamp() * 1000`` loses a millisecond to float rounding)."""
    return ((value if value.tzinfo else value.replace(tzinfo=dt.UTC)) - _EPOCH) // _ONE_MS


def to_avro(record: Any) -> Any:
    """A NamedTuple (nested ones included) as the plain dict fastavro writes."""
    if hasattr(record, "_asdict"):
        return {name: to_avro(value) for name, value in record._asdict().items()}
    if isinstance(record, Mapping):
        return {k: to_avro(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [to_avro(v) for v in record]
    return record


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    """(field name, type with Optional unwrapped) per field, computed once per class."""
    fields = []
    for name, target in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(target) if a is not type(None)]
        fields.append((name, args[0] if typing.get_origin(target) is typing.Union and len(args) == 1 else target))
    return tuple(fields)


def from_avro(cls: type, data: Mapping[str, Any]) -> Any:
    """Build ``cls`` from a decoded Avro dict; missing optional fields become None."""
    values = {}
    for name, inner in _field_types(cls):
        value = data.get(name)
        if isinstance(value, dt.datetime):
            value = epoch_millis(value)
        elif value is not None and hasattr(inner, "_fields"):
            value = from_avro(inner, value)
        elif isinstance(value, list):
            value = list(value)
        values[name] = value
    return cls(**values)


# --- pipeline envelopes: a contract record and where it came from -------------------------------------------


class SourcedEvent(NamedTuple):
    """A decoded event with the record it came from, so a later rejection can dead-letter the original bytes."""

    event: ClickEvent
    source: KafkaRecord


class TrackedEvent(NamedTuple):
    """A valid (or filtered) event, the input record it completes, and that record as read: a later stage's
    dead letter (e.g. an output that cannot be encoded) carries the original Kafka bytes, so it can be re-driven."""

    record: ClickEvent
    provenance: Optional[Provenance]
    source: Optional[KafkaRecord] = None


class TrackedEnriched(NamedTuple):
    """An enriched event, the input record (and route) it completes, and that record as read."""

    record: EnrichedEvent
    provenance: Optional[Provenance]
    source: Optional[KafkaRecord] = None


class TrackedDeadLetter(NamedTuple):
    """A dead letter and the input record it completes (None for one of an aggregate output)."""

    record: DeadLetter
    provenance: Optional[Provenance]


#: Envelopes of per-record outputs: ``record`` is what is written, ``provenance`` what it completes.
TRACKED_TYPES: tuple[type, ...] = (TrackedEvent, TrackedEnriched, TrackedDeadLetter)

for _record_type in (SourcedEvent, *TRACKED_TYPES):
    beam.coders.registry.register_coder(_record_type, beam.coders.RowCoder)
RECORD_TYPES = (*RECORD_TYPES, SourcedEvent, *TRACKED_TYPES)
