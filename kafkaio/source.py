"""``ReadFromKafka``: Kafka topic-partitions as restrictions of a splittable DoFn.

Shape: ``Impulse -> discover partitions (SDF over partition numbers) -> read partition (SDF over offsets)``.

- One restriction per topic-partition, ``OffsetRange(start, end)``: ``end`` is "infinity" for a
  long-running job, or the partition's end offset when the job starts with ``stop_at_end`` (a bounded
  read that finishes by itself once everything present at launch is read).
- A consumer per partition is assigned (``assign`` + offset, never a group subscription), so the runner,
  not Kafka's group protocol, decides who reads what. Each ``process`` call reads at most
  ``max_records_per_bundle`` records or ``max_bundle_seconds``, then checkpoints with
  ``defer_remainder`` (yielding a ``ProcessContinuation`` does not work on the portable Python worker).
- Offsets are not committed by the reader: each record carries ``covers_from`` (the reader's position
  before it) so that ``kafkaio.commit.CommitOffsets`` can commit past a record once every output made
  from it is acknowledged by Kafka. The reader only records where it starts: the start offset of each
  partition is committed for the group when the read begins, so the committer counts from the same place.
- Element timestamps are the Kafka record timestamps; the watermark of a partition is the highest
  timestamp read from it (Kafka timestamps are monotone per partition with log-append time). A
  partition with no new record for ``idle_timeout_seconds`` advances its watermark to wall-clock time
  minus that timeout, so an idle partition cannot hold windows back forever; records that arrive later
  than that are late data downstream.
- New partitions of the topic are discovered every ``discovery_interval_seconds`` while running. A runner
  may resume a deferred remainder before the delay it was given (Prism 2.76 ignores the delay): the
  discovery then waits out the rest of the interval itself, in steps of at most a second, instead of
  asking the broker again. Measured on Prism before this: 8,213 discovery bundles (each a metadata
  request) in a 38 s run, which held the worker's GIL for 35 s of it.
- ``restriction_size`` reports the backlog (end offset - position) to the runner.
- A broker that is down or restarting is waited out, not failed on: librdkafka reconnects by itself, so a
  transient error (``is_transient``) ends the slice and the partition is polled again after a short delay;
  partition discovery likewise tries again at its next interval. Only permanent errors fail the bundle.
- A partition whose polls have waited ``stall_seconds`` in all without a record (an empty poll counts as at least
  ``poll_timeout_seconds``, also when it did not wait: see ``_poll_wait``) is checked against the broker's
  end offset; when the broker has records past the position (or cannot say), the partition gets a new consumer.
  Why: after a broker restart librdkafka can keep a partition leaderless for good (librdkafka issue #5430):
  measured in the broker fault case, a reader's consumer then returned nothing while 1,382 records waited, and
  its stale cached end offset made the partition look caught up. Time spent waiting in polls, not wall time:
  on a backlog the runner may not schedule a partition for longer than that, and a healthy consumer's first
  poll after such a pause can come back empty.
"""

import logging
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.iobase import RestrictionTracker, WatermarkEstimator
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kafkaio.config import ClientConfig
from schemas.records import KafkaRecord
from telemetry.endpoint import serve_worker_metrics
from telemetry.metrics import RECORDS_IN

_LOG = logging.getLogger(__name__)
#: OffsetRange end of an unbounded partition read.
UNBOUNDED = sys.maxsize
_METADATA_TIMEOUT_S = 10.0
_NO_LEADER_YET = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
}


#: Errors that a broker outage or restart produces and that librdkafka recovers from by itself.
_TRANSIENT = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    *_NO_LEADER_YET,
}
_RETRY_DELAY_S = 1.0
_EARLY_RESUME_WAIT_S = 1.0  # longest a discovery resumed early waits in one bundle
_STALL_QUERY_TIMEOUT_S = 2.0


def is_transient(error: KafkaError) -> bool:
    """True for an error that only says a broker cannot be reached right now."""
    return error.code() in _TRANSIENT or error.retriable()


class KafkaPartition(NamedTuple):
    topic: str
    partition: int


beam.coders.registry.register_coder(KafkaPartition, beam.coders.RowCoder)


class ReadConfig(BaseModel):
    """What to read and how; every field is a pipeline setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str = Field(description="Topic to read.")
    group_id: str = Field(
        description="Consumer group whose committed offsets say where a read starts (CommitOffsets moves them)."
    )
    start: Literal["committed", "earliest", "latest", "timestamp"] = Field(
        "committed",
        description="Where a partition starts: the group's committed offset (earliest when it has none), the "
        "earliest or latest offset, or the first offset at start_timestamp_ms.",
    )
    start_timestamp_ms: int | None = Field(None, ge=0, description="For start=timestamp: epoch millis.")
    stop_at_end: bool = Field(
        False, description="Read up to the end offsets found at start, then finish (a bounded run)."
    )
    idle_timeout_seconds: float = Field(
        5.0, gt=0, description="A partition without new records this long stops holding the watermark back."
    )
    max_records_per_bundle: int = Field(100, ge=1, description="Records read per partition before a checkpoint.")
    max_bundle_seconds: float = Field(0.5, gt=0, description="Time spent per partition before a checkpoint.")
    poll_timeout_seconds: float = Field(0.1, gt=0, description="How long one poll of an idle partition waits.")
    discovery_interval_seconds: float = Field(10.0, gt=0, description="How often new partitions are looked for.")
    stall_seconds: float = Field(
        15.0,
        gt=0,
        description="A partition whose polls waited this long in all without a record, while the broker has "
        "more, gets a new consumer.",
    )

    @model_validator(mode="after")
    def _timestamp_given(self) -> "ReadConfig":
        if self.start == "timestamp" and self.start_timestamp_ms is None:
            raise ValueError("start=timestamp needs start_timestamp_ms")
        return self


def new_consumer(client: ClientConfig, group_id: str) -> Consumer:
    """A consumer that never subscribes and never commits by itself: positions and commits are ours."""
    return Consumer(
        {
            **client.resolve(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )


def watermark_offsets(consumer: Consumer, tp: TopicPartition, timeout: float = _METADATA_TIMEOUT_S) -> tuple[int, int]:
    """(low, high) offsets, retried while a new topic's partition has no leader yet (a retriable error)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=timeout)
        except KafkaException as err:
            if err.args[0].code() not in _NO_LEADER_YET or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class _Clients:
    """A lazily made metadata consumer, dropped on pickling (clients never travel in the graph)."""

    def __init__(self, client: ClientConfig, config: ReadConfig):
        self._client = client
        self._config = config
        self._consumer: Consumer | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_consumer": None}

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = new_consumer(self._client, self._config.group_id)
        return self._consumer

    def partition_count(self) -> int:
        metadata = self.consumer.list_topics(self._config.topic, timeout=_METADATA_TIMEOUT_S)
        topic = metadata.topics.get(self._config.topic)
        if topic is None or topic.error is not None:
            raise KafkaException(topic.error if topic is not None else f"topic {self._config.topic} not found")
        return len(topic.partitions)

    def watermark_offsets(self, partition: KafkaPartition) -> tuple[int, int]:
        return watermark_offsets(self.consumer, TopicPartition(partition.topic, partition.partition))

    def start_offset(self, partition: KafkaPartition) -> int:
        """The first offset to read, from the configured start position; committed for the group when it
        differs from the group's offset, so the group says where this read began."""
        config = self._config
        low, high = self.watermark_offsets(partition)
        tp = TopicPartition(partition.topic, partition.partition)
        committed = self.consumer.committed([tp], timeout=_METADATA_TIMEOUT_S)[0]
        if committed.error is not None:
            raise KafkaException(committed.error)
        if config.start == "committed":
            offset = committed.offset if committed.offset >= 0 else low
        elif config.start == "earliest":
            offset = low
        elif config.start == "latest":
            offset = high
        else:
            tp.offset = config.start_timestamp_ms
            found = self.consumer.offsets_for_times([tp], timeout=_METADATA_TIMEOUT_S)[0]
            offset = high if found.offset in (-1, OFFSET_END) else found.offset
        offset = min(max(offset, low), high)  # a committed offset below retention restarts at the earliest
        if offset != committed.offset:
            self.consumer.commit(offsets=[TopicPartition(tp.topic, tp.partition, offset)], asynchronous=False)
        return offset


# --- partition discovery -------------------------------------------------------------------------------------


class _CheckpointOnlyTracker(OffsetRestrictionTracker):
    """Splits only at the current position (checkpoints): a fractional split of ``[x, UNBOUNDED)`` would hand
    a second reader a range starting at 2**62, and any split would break per-partition order."""

    def try_split(self, fraction_of_remainder: float):
        if fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)


class _DiscoverPartitionsFn(beam.DoFn, RestrictionProvider):
    """Emits one ``KafkaPartition`` per partition number; its restriction is over partition numbers (claiming
    n means partition n was emitted, and partitions only grow), bounded by the count at start or unbounded."""

    def __init__(self, clients: _Clients, config: ReadConfig):
        self._clients = clients
        self._config = config

    def initial_restriction(self, element: Any) -> OffsetRange:
        end = self._clients.partition_count() if self._config.stop_at_end else UNBOUNDED
        return OffsetRange(0, end)

    def create_tracker(self, restriction: OffsetRange) -> RestrictionTracker:
        return _CheckpointOnlyTracker(restriction)

    def restriction_size(self, element: Any, restriction: OffsetRange) -> int:
        return 1

    def split(self, element: Any, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction

    def restriction_coder(self) -> PickleCoder:
        return PickleCoder()

    def setup(self) -> None:
        self._next_discovery = 0.0  # time.monotonic() when the broker is asked again

    def process(
        self,
        element: Any,
        tracker: OffsetRestrictionTracker = beam.DoFn.RestrictionParam(),
        watermark: ManualWatermarkEstimator = beam.DoFn.WatermarkEstimatorParam(
            ManualWatermarkEstimator.default_provider()
        ),
    ) -> Iterator[KafkaPartition]:
        restriction = tracker.current_restriction()
        if restriction.stop == UNBOUNDED and not self._due():  # resumed before its delay (see the module doc)
            self._advance(watermark)
            tracker.defer_remainder(Duration(seconds=self._config.discovery_interval_seconds))
            return
        try:
            count = min(self._clients.partition_count(), restriction.stop)
        except KafkaException as err:
            if restriction.stop != UNBOUNDED or not is_transient(err.args[0]):
                raise
            _LOG.warning("partition discovery of %s: %s; trying again later", self._config.topic, err)
            self._next_discovery = time.monotonic() + self._config.discovery_interval_seconds
            tracker.defer_remainder(Duration(seconds=self._config.discovery_interval_seconds))
            return
        for number in range(restriction.start, count):
            if not tracker.try_claim(number):
                return
            yield KafkaPartition(self._config.topic, number)
        if restriction.stop != UNBOUNDED:
            return
        self._advance(watermark)
        self._next_discovery = time.monotonic() + self._config.discovery_interval_seconds
        tracker.defer_remainder(Duration(seconds=self._config.discovery_interval_seconds))

    def _due(self) -> bool:
        """Whether the next discovery is due, after waiting up to ``_EARLY_RESUME_WAIT_S`` for it."""
        early = self._next_discovery - time.monotonic()
        if early > 0:
            time.sleep(min(early, _EARLY_RESUME_WAIT_S))
        return time.monotonic() >= self._next_discovery

    @staticmethod
    def _advance(watermark: ManualWatermarkEstimator) -> None:
        # The descriptors hold nothing back: the partitions' own watermarks do.
        now = Timestamp.now()
        if watermark.current_watermark() is None or watermark.current_watermark() < now:
            watermark.set_watermark(now)


# --- partition reading ---------------------------------------------------------------------------------------


class _Watermark(WatermarkEstimator):
    """A partition's watermark (highest record timestamp, or wall clock minus the idle timeout when idle).

    State: (watermark, wall-clock seconds of the last record or of the restriction's start).
    """

    def __init__(self, state: tuple[Timestamp, float] | None):
        self._watermark, self._last_active = state if state is not None else (MIN_TIMESTAMP, time.time())

    def observe_timestamp(self, timestamp: Timestamp) -> None:
        pass

    def current_watermark(self) -> Timestamp:
        return self._watermark

    def get_estimator_state(self) -> tuple[Timestamp, float]:
        return self._watermark, self._last_active

    # Methods, not attributes: the runner hands process() a thread-safe proxy that forwards method calls only.
    def advance(self, timestamp: Timestamp) -> None:
        """A record with this timestamp was read (or the partition is idle): move the watermark up to it."""
        if timestamp > self._watermark:
            self._watermark = timestamp
        self._last_active = time.time()

    def advance_if_idle(self, idle_timeout_seconds: float) -> None:
        """No record for ``idle_timeout_seconds``: hold nothing back beyond wall clock minus that timeout."""
        now = time.time()
        if now - self._last_active >= idle_timeout_seconds:
            candidate = Timestamp.of(now - idle_timeout_seconds)
            if candidate > self._watermark:
                self._watermark = candidate


class _WatermarkProvider(WatermarkEstimatorProvider):
    def initial_estimator_state(self, element: KafkaPartition, restriction: OffsetRange) -> None:
        return None

    def create_watermark_estimator(self, state: tuple[Timestamp, float] | None) -> _Watermark:
        return _Watermark(state)

    def estimator_state_coder(self) -> PickleCoder:
        return PickleCoder()


class _ReadPartitionFn(beam.DoFn, RestrictionProvider):
    """Reads one partition's ``OffsetRange(start, end)`` in budgeted slices. The restriction's size is the
    backlog, reported to the runner; it is split only at checkpoints, which keeps per-partition order."""

    def __init__(self, client: ClientConfig, config: ReadConfig, clients: _Clients):
        self._client = client
        self._config = config
        self._clients = clients

    # -- restriction provider

    def initial_restriction(self, element: KafkaPartition) -> OffsetRange:
        start = self._clients.start_offset(element)
        end = self._clients.watermark_offsets(element)[1] if self._config.stop_at_end else UNBOUNDED
        return OffsetRange(start, max(start, end))

    def create_tracker(self, restriction: OffsetRange) -> RestrictionTracker:
        return _CheckpointOnlyTracker(restriction)

    def split(self, element: KafkaPartition, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction

    def restriction_size(self, element: KafkaPartition, restriction: OffsetRange) -> int:
        if restriction.stop != UNBOUNDED:
            return restriction.size()
        try:
            high = self._clients.watermark_offsets(element)[1]
        except KafkaException:
            return 1
        return max(1, high - restriction.start)

    def restriction_coder(self) -> PickleCoder:
        return PickleCoder()

    # -- reading

    def setup(self) -> None:
        # partition -> (consumer, the offset it returns next)
        self._consumers: dict[KafkaPartition, tuple[Consumer, int]] = {}
        # partition -> seconds its polls waited without a record since its last record (or last stall check)
        self._waited_empty: dict[KafkaPartition, float] = {}
        # partition -> whether its last slice read a record (then the others' polls do not wait: _poll_wait)
        self._had_records: dict[KafkaPartition, bool] = {}
        self._read = beam.metrics.Metrics.counter("kafkaio", f"records_read[{self._config.topic}]")
        serve_worker_metrics()

    def teardown(self) -> None:
        for consumer, _ in self._consumers.values():
            consumer.close()
        self._consumers.clear()

    def process(
        self,
        element: KafkaPartition,
        tracker: OffsetRestrictionTracker = beam.DoFn.RestrictionParam(),
        watermark: _Watermark = beam.DoFn.WatermarkEstimatorParam(_WatermarkProvider()),
    ) -> Iterator[TimestampedValue]:
        config = self._config
        restriction = tracker.current_restriction()
        position = restriction.start
        consumer = self._positioned_consumer(element, position)
        wait = self._poll_wait()
        deadline = time.monotonic() + config.max_bundle_seconds
        at_end = False  # the consumer reached the partition's end offset (PARTITION_EOF)
        idle = False  # a poll returned nothing (no record yet: the partition may still be filling)
        waited_empty = 0.0  # how long that poll counts as having waited (at least poll_timeout_seconds)
        broker_down = False  # a transient error: librdkafka reconnects, this partition is polled again later
        budget = config.max_records_per_bundle
        records_in = RECORDS_IN.labels(element.topic, str(element.partition))
        while (
            not at_end
            and not idle
            and not broker_down
            and position < restriction.stop
            and position - restriction.start < budget
        ):
            if time.monotonic() >= deadline:
                break
            polled_at = time.monotonic()
            messages = consumer.consume(min(500, budget - (position - restriction.start)), wait)
            idle = not messages
            if idle:
                waited_empty = max(time.monotonic() - polled_at, config.poll_timeout_seconds)
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end = True
                        continue
                    if not is_transient(error):
                        raise KafkaException(error)  # fails the bundle: nothing is skipped
                    _LOG.warning("reading %s[%d]: %s; polling again", element.topic, element.partition, error)
                    broker_down = True
                    break
                offset = message.offset()
                if not tracker.try_claim(offset):  # the runner split the rest off: stop here
                    # The consumer already fetched past ``offset``: force a seek when the residual is read.
                    self._consumers[element] = (consumer, -1)
                    self._had_records[element] = True
                    self._read.inc(position - restriction.start)
                    return
                _, timestamp_ms = message.timestamp()
                event_time = Timestamp(micros=timestamp_ms * 1000)  # the Kafka timestamp is the element's
                record = KafkaRecord(
                    message.key(), message.value(), element.topic, element.partition, offset, position, timestamp_ms
                )
                records_in.inc()
                yield TimestampedValue(record, event_time)
                watermark.advance(event_time)
                position = offset + 1
        self._consumers[element] = (consumer, position)
        self._had_records[element] = position > restriction.start
        self._read.inc(position - restriction.start)
        if restriction.stop != UNBOUNDED and (position >= restriction.stop or at_end):
            # Bounded and read to the end offset found at start. Offsets past the last record (gaps, control
            # records) are claimed too, so the restriction is done.
            if position < restriction.stop:
                tracker.try_claim(restriction.stop - 1)
            self._had_records.pop(element, None)  # done: it must not keep the others' polls from waiting
            return
        if broker_down:  # records after the error in that batch were not emitted: seek back to ``position``
            self._consumers[element] = (consumer, -1)
            tracker.defer_remainder(Duration(seconds=_RETRY_DELAY_S))
            return
        if position > restriction.start:
            self._waited_empty[element] = 0.0
        elif idle and self._replaced_if_stalled(consumer, element, position, waited_empty):
            tracker.defer_remainder(Duration(seconds=0))
            return
        caught_up = at_end or (idle and self._caught_up(consumer, element, position))
        if caught_up:  # an empty poll alone proves nothing: the fetch after a seek may simply not be back yet
            watermark.advance_if_idle(config.idle_timeout_seconds)
        tracker.defer_remainder(Duration(seconds=config.poll_timeout_seconds if caught_up else 0))

    def _poll_wait(self) -> float:
        """How long this slice's polls wait for a record that is not there yet.

        Prism runs a stage's partitions one after another in one bundle. A poll waiting ``poll_timeout_seconds``
        on each partition that had nothing cost every bundle 0.1 s per quiet or finished partition (librdkafka's
        ``consume`` waits out its timeout unless the whole batch is there): measured on a 60k backlog, 1,017
        such waits, and the reader thread spent 88 % of its time in them while other partitions had records
        queued. So a poll does not wait while any partition read records in its last slice, and when none did,
        the partitions share one ``poll_timeout_seconds`` between them: the reader still paces itself on a
        runner that resumes deferred work at once.
        """
        if any(self._had_records.values()):
            return 0.0
        return self._config.poll_timeout_seconds / max(1, len(self._had_records))

    def _replaced_if_stalled(self, consumer: Consumer, partition: KafkaPartition, position: int, waited: float) -> bool:
        """Once per ``stall_seconds`` of empty polls: drops the consumer if the broker has records past
        ``position`` (or cannot say), so the next slice reads with a new one; True when it did."""
        waited += self._waited_empty.get(partition, 0.0)
        self._waited_empty[partition] = waited
        if waited < self._config.stall_seconds:
            return False
        self._waited_empty[partition] = 0.0
        tp = TopicPartition(partition.topic, partition.partition)
        try:
            _, end = consumer.get_watermark_offsets(tp, timeout=_STALL_QUERY_TIMEOUT_S, cached=False)
        except KafkaException as err:
            end = f"unknown ({err.args[0].str()})"
        else:
            if end <= position:
                return False  # caught up: the partition is quiet, not stuck
        _LOG.warning(
            "polls of %s[%d] waited %.0f s without a record at offset %d, end offset %s: reading it with a new "
            "consumer",
            partition.topic,
            partition.partition,
            self._config.stall_seconds,
            position,
            end,
        )
        del self._consumers[partition]
        consumer.close()
        return True

    @staticmethod
    def _caught_up(consumer: Consumer, partition: KafkaPartition, position: int) -> bool:
        """True when ``position`` is at the partition's end offset as last fetched by ``consumer``."""
        _, high = consumer.get_watermark_offsets(TopicPartition(partition.topic, partition.partition), cached=True)
        return high >= 0 and position >= high

    def _positioned_consumer(self, partition: KafkaPartition, offset: int) -> Consumer:
        cached = self._consumers.get(partition)
        if cached is not None and cached[1] == offset:
            return cached[0]
        consumer = cached[0] if cached is not None else new_consumer(self._client, self._config.group_id)
        consumer.assign([TopicPartition(partition.topic, partition.partition, offset)])
        return consumer


class ReadFromKafka(beam.PTransform[beam.pvalue.PBegin, beam.PCollection[KafkaRecord]]):
    """Reads ``config.topic`` as ``KafkaRecord``s timestamped with their Kafka timestamps."""

    def __init__(self, client: ClientConfig, config: ReadConfig):
        super().__init__()
        self._client = client
        self._config = config

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[KafkaRecord]:
        clients = _Clients(self._client, self._config)
        discover = _DiscoverPartitionsFn(clients, self._config)
        read = _ReadPartitionFn(self._client, self._config, clients)
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "DiscoverPartitions" >> beam.ParDo(discover).with_output_types(KafkaPartition)
            | "ReadPartitions" >> beam.ParDo(read).with_output_types(KafkaRecord)
        )
