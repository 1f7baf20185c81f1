"""kafkaio without a broker: the DoFns driven directly against fake confluent_kafka clients.

The fakes follow librdkafka's semantics where the code relies on them: ``consume(n)`` returns at most ``n``
messages and advances the consumer's position past exactly those (prefetched messages stay queued), a
``_PARTITION_EOF`` event follows the last record of the partition, ``assign`` seeks.
"""

import pickle
import time
from typing import Any

import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import (
    RestrictionTrackerView,
    ThreadsafeRestrictionTracker,
    ThreadsafeWatermarkEstimator,
)
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

import kafkaio.producer
import kafkaio.sink
import kafkaio.source
from kafkaio.config import ClientConfig, KafkaConfigError
from kafkaio.producer import RecoveringProducer
from kafkaio.sink import KafkaWriteError, _WriteFn
from kafkaio.source import (
    UNBOUNDED,
    KafkaPartition,
    ReadConfig,
    _Clients,
    _DiscoverPartitionsFn,
    _ReadPartitionFn,
    _Watermark,
)
from schemas.records import KafkaRecord, OutputRecord, Provenance

TOPIC = "t.raw"
PARTITION = KafkaPartition(TOPIC, 2)
BASE_MS = 1_717_236_000_000
SECRET = "s3cr3t-only-in-the-environment"
SECRET_ENV = "KAFKAIO_TEST_SASL_PASSWORD"


# --- fakes -----------------------------------------------------------------------------------------------------


class FakeError:
    def __init__(self, code: int):
        self._code = code

    def code(self) -> int:
        return self._code

    def str(self) -> str:
        return f"fake error {self._code}"

    def retriable(self) -> bool:
        return False


class FakeMessage:
    def __init__(
        self,
        offset: int = -1,
        key: bytes | None = None,
        value: bytes | None = None,
        timestamp_ms: int = -1,
        partition: int = PARTITION.partition,
        error: FakeError | None = None,
    ):
        self._offset, self._key, self._value = offset, key, value
        self._timestamp_ms, self._partition, self._error = timestamp_ms, partition, error

    def error(self) -> FakeError | None:
        return self._error

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._timestamp_ms)  # TIMESTAMP_CREATE_TIME

    def partition(self) -> int:
        return self._partition


def record(offset: int) -> FakeMessage:
    return FakeMessage(offset, f"k{offset}".encode(), f"v{offset}".encode(), BASE_MS + 1000 * offset)


def eof() -> FakeMessage:
    return FakeMessage(error=FakeError(KafkaError._PARTITION_EOF))


class FakeMetadata:
    class Topic:
        def __init__(self, partitions: int):
            self.error = None
            self.partitions = {n: object() for n in range(partitions)}

    def __init__(self, topics: dict[str, int]):
        self.topics = {name: self.Topic(n) for name, n in topics.items()}


class FakeConsumer:
    """One partition's log plus the metadata calls of ``_Clients``.

    ``log``: the records present; ``low``/``high``: the watermark offsets (high defaults to after the last
    record); ``cached_high``: what ``get_watermark_offsets(cached=True)`` answers (defaults to ``high``);
    ``batches``: if given, ``consume`` returns these lists in turn instead of reading the log.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config  # holds the resolved secrets, as a real consumer would
        self.log: list[FakeMessage] = []
        self.low = 0
        self.high: int | None = None
        self.cached_high: int | None = None
        self.batches: list[list[FakeMessage]] | None = None
        self.committed_offset = OFFSET_INVALID
        self.time_offset = -1
        self.partitions = 0
        self.position: int | None = None
        self.eof_sent_at: int | None = None
        self.assigned: list[tuple[str, int, int]] = []
        self.consume_calls: list[int] = []
        self.timeouts: list[float] = []  # of each consume call
        self.commits: list[tuple[list[tuple[str, int, int]], bool]] = []
        self.closed = False
        self.query_error: int | None = None  # what an uncached get_watermark_offsets raises, if anything

    def _high(self) -> int:
        if self.high is not None:
            return self.high
        return self.log[-1].offset() + 1 if self.log else self.low

    # reading
    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned += [(tp.topic, tp.partition, tp.offset) for tp in tps]
        self.position = tps[0].offset
        self.eof_sent_at = None

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        assert self.position is not None, "consume before assign"
        self.consume_calls.append(num_messages)
        self.timeouts.append(timeout)
        if self.batches is not None:
            if self.batches:
                return self.batches.pop(0)
            time.sleep(timeout)  # an empty poll waits its timeout, as librdkafka's does
            return []
        out = [m for m in self.log if m.offset() >= self.position][:num_messages]
        if out:
            self.position = out[-1].offset() + 1
        if len(out) < num_messages and self.position >= self._high() and self.eof_sent_at != self.position:
            self.eof_sent_at = self.position
            out.append(eof())
        return out

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        if not cached and self.query_error is not None:
            raise KafkaException(KafkaError(self.query_error))
        if cached:
            return self.low, self._high() if self.cached_high is None else self.cached_high
        return self.low, self._high()

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.commits.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))

    def close(self) -> None:
        self.closed = True

    # metadata (_Clients)
    def list_topics(self, topic: str, timeout: float) -> FakeMetadata:
        return FakeMetadata({topic: self.partitions})

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.committed_offset) for tp in tps]

    def offsets_for_times(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.time_offset) for tp in tps]


CLIENT = ClientConfig({"bootstrap.servers": "localhost:9092"}, {"sasl.password": SECRET_ENV})


@pytest.fixture
def consumers(monkeypatch) -> list[FakeConsumer]:
    """Every consumer ``new_consumer`` makes, in order; each resolves the (secret) client configuration."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    made: list[FakeConsumer] = []

    def new_consumer(client: ClientConfig, group_id: str) -> FakeConsumer:
        consumer = FakeConsumer({**client.resolve(), "group.id": group_id})
        made.append(consumer)
        return consumer

    monkeypatch.setattr(kafkaio.source, "new_consumer", new_consumer)
    return made


def read_config(**overrides: Any) -> ReadConfig:
    return ReadConfig(**{"topic": TOPIC, "group_id": "g", **overrides})


def read_fn(config: ReadConfig | None = None) -> _ReadPartitionFn:
    config = config or read_config()
    fn = _ReadPartitionFn(CLIENT, config, _Clients(CLIENT, config))
    fn.setup()
    return fn


class Run:
    """One ``process`` call as the SDK harness makes it: tracker and estimator behind their thread-safe views."""

    def __init__(self, fn: _ReadPartitionFn, start: int, stop: int, state: tuple[Timestamp, float] | None = None):
        self.tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(OffsetRange(start, stop)))
        self.estimator = _Watermark(state)
        self.output = fn.process(
            PARTITION,
            tracker=RestrictionTrackerView(self.tracker),
            watermark=ThreadsafeWatermarkEstimator(self.estimator),
        )

    def all(self) -> list[TimestampedValue]:
        return list(self.output)

    def residual(self) -> OffsetRange | None:
        status = self.tracker.deferred_status()
        return status[0] if status else None


def offsets(values: list[TimestampedValue]) -> list[int]:
    return [v.value.offset for v in values]


# --- reading ---------------------------------------------------------------------------------------------------


def make_consumer(consumers: list[FakeConsumer], fn: _ReadPartitionFn, **attrs: Any) -> FakeConsumer:
    """Pre-creates the partition's consumer (as a previous bundle at another offset would) and configures it."""
    consumer = kafkaio.source.new_consumer(CLIENT, "g")
    for name, value in attrs.items():
        setattr(consumer, name, value)
    fn._consumers[PARTITION] = (consumer, -1)  # cached at an offset no restriction starts at: process() seeks
    return consumer


def test_bounded_range_emits_every_record_with_its_kafka_timestamp_and_completes(consumers):
    fn = read_fn()
    consumer = make_consumer(consumers, fn, log=[record(n) for n in range(5)])
    run = Run(fn, 0, 5)
    values = run.all()

    assert values == [
        TimestampedValue(
            KafkaRecord(f"k{n}".encode(), f"v{n}".encode(), TOPIC, 2, n, n, BASE_MS + 1000 * n),
            Timestamp(micros=(BASE_MS + 1000 * n) * 1000),
        )
        for n in range(5)
    ]
    assert consumer.assigned == [(TOPIC, 2, 0)]
    run.tracker.check_done()
    assert run.residual() is None
    assert run.estimator.current_watermark() == Timestamp.of((BASE_MS + 4000) / 1000)


def test_budget_checkpoints_after_max_records_and_resumes_without_a_seek(consumers):
    fn = read_fn(read_config(max_records_per_bundle=3))
    consumer = make_consumer(consumers, fn, log=[record(n) for n in range(10)])
    run = Run(fn, 0, UNBOUNDED)

    assert offsets(run.all()) == [0, 1, 2]
    assert consumer.consume_calls == [3]  # never asks for more than the budget
    assert run.tracker.current_restriction() == OffsetRange(0, 3)
    run.tracker.check_done()
    assert run.residual() == OffsetRange(3, UNBOUNDED)

    second = Run(fn, 3, UNBOUNDED)
    assert offsets(second.all()) == [3, 4, 5]
    assert consumer.assigned == [(TOPIC, 2, 0)]  # the cached consumer was already at 3
    assert second.residual() == OffsetRange(6, UNBOUNDED)


def test_the_reader_never_commits_offsets(consumers):
    """Commits come from CommitOffsets, once the records' outputs are written (see test_commit_*)."""
    fn = read_fn(read_config(max_records_per_bundle=4))
    consumer = make_consumer(consumers, fn, log=[record(n) for n in range(10)])
    assert offsets(Run(fn, 0, UNBOUNDED).all()) == [0, 1, 2, 3]
    assert offsets(Run(fn, 4, UNBOUNDED).all()) == [4, 5, 6, 7]
    assert consumer.commits == []


def test_a_permanent_kafka_error_fails_the_bundle(consumers):
    fn = read_fn()
    consumer = make_consumer(
        consumers,
        fn,
        batches=[[record(0), FakeMessage(error=FakeError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), record(1)]],
    )
    run = Run(fn, 0, UNBOUNDED)
    with pytest.raises(KafkaException):
        run.all()
    assert consumer.commits == []


def test_a_broker_outage_is_waited_out_and_the_records_after_it_are_read_again(consumers):
    """A transient error ends the slice after what was emitted; the next slice seeks back, skipping nothing."""
    fn = read_fn()
    consumer = make_consumer(
        consumers, fn, batches=[[record(0), FakeMessage(error=FakeError(KafkaError._TRANSPORT)), record(1)]]
    )
    run = Run(fn, 0, UNBOUNDED)
    assert offsets(run.all()) == [0]
    assert run.residual() == OffsetRange(1, UNBOUNDED)
    consumer.batches, consumer.log = None, [record(0), record(1), record(2)]
    again = Run(fn, 1, UNBOUNDED)
    assert offsets(again.all()) == [1, 2]
    assert consumer.assigned[-1][2] == 1  # sought back to the first record not emitted


def test_an_idle_caught_up_partition_advances_its_watermark_to_wall_clock_minus_the_timeout(consumers):
    fn = read_fn(read_config(idle_timeout_seconds=2.0))
    make_consumer(consumers, fn, log=[record(n) for n in range(5)], batches=[])  # nothing new; cached high 5
    run = Run(fn, 5, UNBOUNDED, state=(MIN_TIMESTAMP, time.time() - 60))
    before = time.time()
    assert run.all() == []
    after = time.time()

    watermark = run.estimator.current_watermark()
    assert Timestamp.of(before - 2.0 - 0.5) <= watermark <= Timestamp.of(after - 2.0)
    assert run.residual() == OffsetRange(5, UNBOUNDED)


def test_an_idle_partition_holds_its_watermark_until_the_timeout_has_passed(consumers):
    fn = read_fn(read_config(idle_timeout_seconds=30.0))
    make_consumer(consumers, fn, log=[record(n) for n in range(5)], batches=[])
    held = Timestamp.of(BASE_MS / 1000)
    run = Run(fn, 5, UNBOUNDED, state=(held, time.time() - 1))
    assert run.all() == []
    assert run.estimator.current_watermark() == held


def test_an_empty_poll_before_the_fetch_is_back_does_not_move_the_watermark(consumers):
    fn = read_fn(read_config(idle_timeout_seconds=0.5))
    # The broker has records up to 8, the consumer just has not fetched them yet.
    make_consumer(consumers, fn, log=[record(n) for n in range(5)], cached_high=8, batches=[])
    run = Run(fn, 5, UNBOUNDED, state=(MIN_TIMESTAMP, time.time() - 60))
    assert run.all() == []
    assert run.estimator.current_watermark() == MIN_TIMESTAMP
    assert run.residual() == OffsetRange(5, UNBOUNDED)


def test_an_unknown_cached_high_watermark_does_not_move_the_watermark(consumers):
    fn = read_fn(read_config(idle_timeout_seconds=0.5))
    make_consumer(consumers, fn, cached_high=OFFSET_INVALID, batches=[])
    run = Run(fn, 0, UNBOUNDED, state=(MIN_TIMESTAMP, time.time() - 60))
    assert run.all() == []
    assert run.estimator.current_watermark() == MIN_TIMESTAMP


def test_a_poll_waits_only_when_no_partition_read_records_and_then_the_partitions_share_the_timeout(consumers):
    """Prism runs the partitions one after another in one bundle: a quiet partition must not hold up the rest."""
    fn = read_fn(read_config(poll_timeout_seconds=0.2))
    quiet = make_consumer(consumers, fn, log=[record(n) for n in range(5)], batches=[])
    other = KafkaPartition(TOPIC, PARTITION.partition + 1)
    fn._had_records[other] = True  # its last slice read records
    Run(fn, 5, UNBOUNDED).all()
    assert quiet.timeouts == [0.0]
    fn._had_records[other] = False  # now every partition's last slice came back empty
    Run(fn, 5, UNBOUNDED).all()
    assert quiet.timeouts[-1] == pytest.approx(0.2 / 2)  # one poll timeout per round over both partitions


STALL = {"stall_seconds": 0.05, "poll_timeout_seconds": 0.03}  # the second empty poll in a row passes the stall


@pytest.mark.parametrize("broker_says", [{"high": 8}, {"query_error": KafkaError._UNKNOWN_PARTITION}])
def test_a_consumer_that_returns_nothing_while_the_broker_has_more_is_replaced(consumers, broker_says):
    """librdkafka can keep a partition leaderless after a broker restart: its consumer returns nothing and its
    cached end offset (5) is stale, while the broker has records up to 8 (or the client cannot even ask)."""
    fn = read_fn(read_config(**STALL))
    stuck = make_consumer(consumers, fn, log=[record(n) for n in range(5)], cached_high=5, batches=[], **broker_says)
    assert Run(fn, 5, UNBOUNDED).all() == [] and not stuck.closed  # one empty poll proves nothing
    run = Run(fn, 5, UNBOUNDED)
    assert run.all() == [] and run.residual() == OffsetRange(5, UNBOUNDED)
    assert stuck.closed and PARTITION not in fn._consumers
    Run(fn, 5, UNBOUNDED).all()
    assert consumers[-1] is not stuck and consumers[-1].assigned == [(TOPIC, PARTITION.partition, 5)]  # reads on


def test_a_partition_the_runner_did_not_schedule_for_a_while_keeps_its_consumer(consumers):
    """On a backlog the runner may leave a partition alone for longer than the stall; the first poll after such a
    pause may come back empty. Time not spent polling is no stall."""
    fn = read_fn(read_config(**STALL))
    healthy = make_consumer(consumers, fn, log=[record(n) for n in range(5)], high=8, batches=[[record(0)]])
    assert offsets(Run(fn, 0, UNBOUNDED).all()) == [0]
    time.sleep(0.1)
    Run(fn, 1, UNBOUNDED).all()  # empty, while the broker has more
    assert not healthy.closed and fn._consumers[PARTITION][0] is healthy


def test_a_quiet_partition_at_the_brokers_end_offset_keeps_its_consumer(consumers):
    fn = read_fn(read_config(**STALL))
    quiet = make_consumer(consumers, fn, log=[record(n) for n in range(5)], batches=[])
    for _ in range(3):
        Run(fn, 5, UNBOUNDED).all()
    assert not quiet.closed and fn._consumers[PARTITION][0] is quiet


def test_a_bounded_range_whose_last_offsets_hold_no_record_is_completed_at_eof(consumers):
    fn = read_fn()
    # offsets 5 and 6 are transaction markers: the end offset found at start is 7, the last record is 4
    make_consumer(consumers, fn, log=[record(n) for n in range(5)], high=5)
    run = Run(fn, 0, 7)
    assert offsets(run.all()) == [0, 1, 2, 3, 4]
    run.tracker.check_done()
    assert run.residual() is None
    assert PARTITION not in fn._had_records  # a finished partition does not stop the others' polls waiting


def test_a_bounded_range_with_gaps_claims_only_what_it_read(consumers):
    fn = read_fn()
    make_consumer(consumers, fn, log=[record(0), record(2), record(5)])  # a compacted partition
    run = Run(fn, 0, 6)
    values = run.all()
    assert offsets(values) == [0, 2, 5]
    # Each record covers the offsets since the previous one, so committing past it commits the gap too.
    assert [v.value.covers_from for v in values] == [0, 1, 3]
    run.tracker.check_done()


def test_a_restriction_starting_elsewhere_than_the_cached_position_seeks(consumers):
    fn = read_fn(read_config(max_records_per_bundle=2))
    consumer = make_consumer(consumers, fn, log=[record(n) for n in range(10)])
    assert offsets(Run(fn, 0, UNBOUNDED).all()) == [0, 1]
    assert offsets(Run(fn, 6, UNBOUNDED).all()) == [6, 7]  # e.g. a retried checkpoint from another worker
    assert consumer.assigned == [(TOPIC, 2, 0), (TOPIC, 2, 6)]


def test_a_runner_split_during_process_loses_no_record(consumers):
    """The runner checkpoints the restriction while process() runs (try_split(0) from another thread).

    The consumer already fetched the whole batch; the residual, read next by the same DoFn instance,
    must still start at the first unclaimed offset.
    """
    fn = read_fn()
    make_consumer(consumers, fn, log=[record(n) for n in range(10)])
    first = Run(fn, 0, UNBOUNDED)
    assert next(first.output).value.offset == 0
    primary, residual = first.tracker.try_split(0)
    assert (primary, residual) == (OffsetRange(0, 1), OffsetRange(1, UNBOUNDED))
    assert list(first.output) == []
    first.tracker.check_done()

    second = Run(fn, 1, UNBOUNDED)
    assert offsets(second.all()) == list(range(1, 10))


def test_restriction_size_is_the_backlog(consumers):
    fn = read_fn()
    consumer = make_consumer(consumers, fn)
    fn._clients._consumer = consumer
    consumer.high = 120
    assert fn.restriction_size(PARTITION, OffsetRange(20, UNBOUNDED)) == 100
    assert fn.restriction_size(PARTITION, OffsetRange(120, UNBOUNDED)) == 1
    assert fn.restriction_size(PARTITION, OffsetRange(20, 50)) == 30


def test_initial_restriction_bounded_by_the_end_offset_at_start(consumers):
    fn = read_fn(read_config(start="earliest", stop_at_end=True))
    fn._clients._consumer = FakeConsumer({})
    fn._clients._consumer.low, fn._clients._consumer.high = 3, 9
    assert fn.initial_restriction(PARTITION) == OffsetRange(3, 9)
    unbounded = read_fn(read_config(start="latest"))
    unbounded._clients._consumer = fn._clients._consumer
    assert unbounded.initial_restriction(PARTITION) == OffsetRange(9, UNBOUNDED)


def test_teardown_closes_the_consumers(consumers):
    fn = read_fn()
    consumer = make_consumer(consumers, fn, log=[record(0)])
    fn.teardown()
    assert consumer.closed


# --- start offsets and discovery -------------------------------------------------------------------------------


def clients(config: ReadConfig, **attrs: Any) -> _Clients:
    made = _Clients(CLIENT, config)
    for name, value in {"low": 10, "high": 50, **attrs}.items():
        setattr(made.consumer, name, value)
    return made


@pytest.mark.parametrize(
    ("start", "attrs", "expected"),
    [
        ("committed", {"committed_offset": 42}, 42),
        ("committed", {"committed_offset": OFFSET_INVALID}, 10),  # the group has not committed: earliest
        ("committed", {"committed_offset": 3}, 10),  # below retention: clamped up to the low watermark
        ("committed", {"committed_offset": 70}, 50),  # beyond the end (topic recreated): clamped down
        ("earliest", {"committed_offset": 42}, 10),
        ("latest", {"committed_offset": 42}, 50),
    ],
)
def test_start_offset(consumers, start, attrs, expected):
    made = clients(read_config(start=start), **attrs)
    assert made.start_offset(PARTITION) == expected
    # The group is told where the read starts (the committer counts from there), unless it already says so.
    recorded = [] if attrs["committed_offset"] == expected else [([(TOPIC, 2, expected)], False)]
    assert made.consumer.commits == recorded


def test_start_offset_by_timestamp(consumers):
    config = read_config(start="timestamp", start_timestamp_ms=BASE_MS)
    assert clients(config, time_offset=17).start_offset(PARTITION) == 17
    assert clients(config, time_offset=-1).start_offset(PARTITION) == 50  # nothing that late: the end


def test_clients_drop_their_consumer_when_pickled(consumers):
    made = clients(read_config())
    assert made.start_offset(PARTITION) == 10
    restored = pickle.loads(pickle.dumps(made))
    assert restored._consumer is None


def test_discovery_with_stop_at_end_emits_each_partition_once_and_finishes(consumers):
    config = read_config(stop_at_end=True)
    made = clients(config, partitions=3)
    fn = _DiscoverPartitionsFn(made, config)
    restriction = fn.initial_restriction(b"")
    assert restriction == OffsetRange(0, 3)
    tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(restriction))
    estimator = ManualWatermarkEstimator(None)
    emitted = list(fn.process(b"", tracker=RestrictionTrackerView(tracker), watermark=estimator))
    assert emitted == [KafkaPartition(TOPIC, 0), KafkaPartition(TOPIC, 1), KafkaPartition(TOPIC, 2)]
    tracker.check_done()
    assert tracker.deferred_status() is None


def discovery(tracker: ThreadsafeRestrictionTracker, fn: _DiscoverPartitionsFn, watermark=None) -> list:
    view = RestrictionTrackerView(tracker)
    return list(fn.process(b"", tracker=view, watermark=watermark or ManualWatermarkEstimator(None)))


def test_discovery_unbounded_emits_new_partitions_and_checks_again_later(consumers):
    config = read_config(discovery_interval_seconds=0.05)
    made = clients(config, partitions=2)
    fn = _DiscoverPartitionsFn(made, config)
    fn.setup()
    tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(fn.initial_restriction(b"")))
    emitted = list(fn.process(b"", tracker=RestrictionTrackerView(tracker), watermark=ManualWatermarkEstimator(None)))
    assert emitted == [KafkaPartition(TOPIC, 0), KafkaPartition(TOPIC, 1)]
    assert tracker.deferred_status()[0] == OffsetRange(2, UNBOUNDED)

    made.consumer.partitions = 4  # two partitions added
    tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(OffsetRange(2, UNBOUNDED)))
    assert discovery(tracker, fn) == [KafkaPartition(TOPIC, 2), KafkaPartition(TOPIC, 3)]  # after the interval


def test_discovery_resumed_before_its_delay_waits_and_does_not_ask_the_broker(consumers, monkeypatch):
    # Prism 2.76 resumes a deferred remainder at once, whatever delay it was given.
    config = read_config(discovery_interval_seconds=10.0)
    made = clients(config, partitions=2)
    fn = _DiscoverPartitionsFn(made, config)
    fn.setup()
    discovery(ThreadsafeRestrictionTracker(OffsetRestrictionTracker(OffsetRange(0, UNBOUNDED))), fn)
    sleeps: list[float] = []
    monkeypatch.setattr("kafkaio.source.time.sleep", sleeps.append)
    monkeypatch.setattr(made.consumer, "list_topics", lambda *a, **k: pytest.fail("asked the broker early"))

    tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(OffsetRange(2, UNBOUNDED)))
    watermark = ManualWatermarkEstimator(None)
    assert discovery(tracker, fn, watermark) == []
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 1.0  # a bounded wait, not the whole interval in one bundle
    assert tracker.deferred_status()[0] == OffsetRange(2, UNBOUNDED)  # nothing claimed, checked again later
    assert watermark.current_watermark() is not None  # the descriptors still hold no watermark back


# --- sink ------------------------------------------------------------------------------------------------------


class FakeProducer:
    """Delivery reports are served by poll/flush; ``fail_keys`` get an error, ``hold`` records get none, and the
    first ``stuck`` producers made deliver nothing (a flush then blocks for its timeout, as librdkafka's does)."""

    instances: list["FakeProducer"] = []
    fail_keys: set[bytes] = set()
    hold = 0
    buffer_full = 0
    stuck = 0

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.produced: list[tuple[str, bytes | None, bytes]] = []
        self.pending: list[tuple[bytes | None, Any]] = []
        self.polls: list[float] = []
        self.purged: list[Any] = []
        self.is_stuck = len(FakeProducer.instances) < FakeProducer.stuck
        FakeProducer.instances.append(self)

    def produce(
        self, topic: str, value: bytes = b"", key: bytes | None = None, on_delivery: Any = None, timestamp: int = 0
    ) -> None:
        if FakeProducer.buffer_full:
            FakeProducer.buffer_full -= 1
            raise BufferError("Local: Queue full")
        self.produced.append((topic, key, value))
        self.pending.append((key, on_delivery))

    def _serve(self, keep: int) -> int:
        serve, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        for key, callback in serve:
            callback(KafkaError(KafkaError._MSG_TIMED_OUT) if key in FakeProducer.fail_keys else None, None)
        return len(serve)

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        for _, callback in self.purged:  # otherwise reports wait for flush (the usual case for a linger.ms batch)
            callback(KafkaError(KafkaError._PURGE_QUEUE), None)
        return len(self.purged)

    def purge(self) -> None:
        self.purged, self.pending = self.pending, []

    def flush(self, timeout: float) -> int:
        if not self.is_stuck:
            self._serve(min(FakeProducer.hold, len(self.pending)))
        if self.pending:
            time.sleep(timeout)
        return len(self.pending)


@pytest.fixture
def producer(monkeypatch) -> type[FakeProducer]:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setattr(FakeProducer, "instances", [])
    monkeypatch.setattr(FakeProducer, "fail_keys", set())
    monkeypatch.setattr(FakeProducer, "hold", 0)
    monkeypatch.setattr(FakeProducer, "buffer_full", 0)
    monkeypatch.setattr(FakeProducer, "stuck", 0)
    monkeypatch.setattr(kafkaio.producer, "Producer", FakeProducer)
    return FakeProducer


def write(records: list[OutputRecord], topic: str = "t.out") -> _WriteFn:
    fn = _WriteFn(topic, CLIENT, 0.2, 0.05)
    fn.setup()
    fn.start_bundle()
    for item in records:
        fn.process(item)
    return fn


RECORDS = [OutputRecord(f"k{n}".encode(), f"v{n}".encode()) for n in range(3)]


def test_sink_all_acknowledged(producer):
    fn = write(RECORDS)
    assert list(fn.finish_bundle()) == []  # no record of an aggregate output has a provenance
    made = producer.instances[0]
    assert made.produced == [("t.out", r.key, r.value) for r in RECORDS]
    assert made.config["acks"] == "all" and made.config["enable.idempotence"] is True
    assert made.config["sasl.password"] == SECRET  # resolved on the worker


def test_sink_a_failed_delivery_fails_the_bundle(producer):
    producer.fail_keys = {b"k1"}
    fn = write(RECORDS)
    with pytest.raises(KafkaWriteError) as raised:
        list(fn.finish_bundle())
    message = str(raised.value)
    assert "t.out" in message
    assert "1 failed and 0 unacknowledged of 3 records" in message
    assert "Message timed out" in message


def test_sink_unacknowledged_after_flush_fails_the_bundle(producer):
    producer.hold = 2
    fn = write(RECORDS)
    with pytest.raises(KafkaWriteError, match="0 failed and 2 unacknowledged of 3 records to t.out"):
        list(fn.finish_bundle())


def test_sink_counts_restart_with_each_bundle(producer):
    producer.fail_keys = {b"k0"}
    fn = write(RECORDS[:1])
    with pytest.raises(KafkaWriteError):
        list(fn.finish_bundle())
    producer.fail_keys = set()
    fn.start_bundle()
    for item in RECORDS[1:]:
        fn.process(item)
    list(fn.finish_bundle())  # the earlier bundle's failure does not fail this one


def test_sink_hands_on_the_provenance_of_written_records_only_once_all_are_acknowledged(producer):
    first, second = Provenance(TOPIC, 2, 7, 9, 0, 2), Provenance(TOPIC, 2, 7, 9, 1, 2)
    window = GlobalWindow()
    fn = _WriteFn("t.out", CLIENT, 0.2, 0.05)
    fn.setup()
    fn.start_bundle()
    fn.process(RECORDS[0]._replace(provenance=first), Timestamp(5), window)
    fn.process(RECORDS[1], Timestamp(6), window)  # a window metric: nothing to hand on
    fn.process(RECORDS[2]._replace(provenance=second), Timestamp(7), window)
    assert list(fn.finish_bundle()) == [
        WindowedValue(first, Timestamp(5), (window,)),
        WindowedValue(second, 7, (window,)),
    ]

    producer.hold = 1  # one record of the next bundle is never acknowledged: nothing is handed on
    fn.start_bundle()
    fn.process(RECORDS[0]._replace(provenance=first), Timestamp(8), window)
    with pytest.raises(KafkaWriteError):
        list(fn.finish_bundle())


def test_sink_a_producer_without_delivery_reports_is_replaced_and_the_records_sent_again(producer):
    """librdkafka can leave a partition leaderless for good after a broker restart: a flush that hears nothing for
    stall_seconds must not wait out the whole flush timeout on that producer."""
    producer.stuck = 1
    parts = [Provenance(TOPIC, 0, n, n, 0, 1) for n in range(3)]
    fn = _WriteFn("t.out", CLIENT, 5.0, 0.05)
    fn.setup()
    fn.start_bundle()
    for record, part in zip(RECORDS, parts, strict=True):
        fn.process(record._replace(provenance=part), Timestamp(1), GlobalWindow())
    started = time.monotonic()
    handed_on = [wv.value for wv in fn.finish_bundle()]
    assert time.monotonic() - started < 1.0  # replaced after 0.05 s, not after the 5 s flush timeout
    stuck, fresh = producer.instances
    assert len(stuck.purged) == 3 and fresh.produced == stuck.produced  # every record sent again, in order
    assert handed_on == parts  # each handed on once; the purged copies' error reports are no failure


def test_sink_a_producer_stuck_through_the_flush_timeout_still_fails_the_bundle(producer):
    producer.stuck = 10**6  # every replacement is stuck as well
    fn = write(RECORDS)
    with pytest.raises(KafkaWriteError, match="0 failed and 3 unacknowledged of 3 records to t.out"):
        list(fn.finish_bundle())
    assert 3 <= len(producer.instances) <= 6  # one per 0.05 s stall within the 0.2 s flush timeout


def test_sink_a_full_queue_is_waited_out_not_dropped(producer):
    producer.buffer_full = 2
    fn = write(RECORDS[:1])
    list(fn.finish_bundle())
    made = producer.instances[0]
    assert made.produced == [("t.out", b"k0", b"v0")]
    assert made.polls[:2] == [0.1, 0.1]


# --- the recovering producer (under the sink and the ingestion publisher) ---------------------------------------


def test_a_report_the_replaced_producer_still_delivers_is_passed_on_once(producer):
    producer.stuck = 2
    reports: list[KafkaError | None] = []
    recovering = RecoveringProducer({}, stall_seconds=0.05)
    recovering.produce("t.out", b"v", b"k", on_delivery=lambda err, msg: reports.append(err))
    assert recovering.flush(0.07) == 1 and recovering.replacements == 1
    stuck, fresh = producer.instances
    stuck.purged[0][1](None, None)  # the old producer's copy is acknowledged after all (it was in flight)
    fresh.is_stuck = False
    assert recovering.flush(1.0) == 0  # the new producer's copy is acknowledged too
    assert reports == [None] and fresh.produced == stuck.produced


def test_a_record_past_its_delivery_timeout_fails_instead_of_being_sent_again(producer):
    producer.stuck = 1
    reports: list[KafkaError | None] = []
    recovering = RecoveringProducer({"delivery.timeout.ms": 50}, stall_seconds=0.1)
    recovering.produce("t.out", b"v", b"k", timestamp=5, on_delivery=lambda err, msg: reports.append(err))
    assert recovering.flush(0.2) == 0
    assert [err.code() for err in reports] == [KafkaError._MSG_TIMED_OUT]
    assert producer.instances[1].produced == []  # not sent again


def test_a_producer_idle_for_long_is_not_replaced_on_its_next_record(producer):
    recovering = RecoveringProducer({}, stall_seconds=0.05)
    time.sleep(0.1)  # nothing outstanding: quiet, not stalled
    recovering.produce("t.out", b"v", b"k")
    recovering.poll(0)
    assert recovering.replacements == 0 and recovering.outstanding == 1


# --- configuration and secrets ---------------------------------------------------------------------------------


def test_resolve_reads_secrets_from_the_environment(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    assert CLIENT.resolve() == {"bootstrap.servers": "localhost:9092", "sasl.password": SECRET}
    assert CLIENT.bootstrap_servers == "localhost:9092"


def test_resolve_names_the_missing_variable_never_a_value(monkeypatch):
    monkeypatch.setenv("KAFKAIO_TEST_USER", SECRET)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    client = ClientConfig({}, {"sasl.username": "KAFKAIO_TEST_USER", "sasl.password": SECRET_ENV})
    with pytest.raises(KafkaConfigError) as raised:
        client.resolve()
    message = str(raised.value)
    assert SECRET_ENV in message
    assert "KAFKAIO_TEST_USER" not in message.split(" must ")[0]  # only the missing one is named as missing
    assert SECRET not in message


def test_pickled_configuration_and_read_fn_hold_no_secret(consumers):
    config = read_config()
    made = clients(config)
    fn = _ReadPartitionFn(CLIENT, config, made)
    assert made.start_offset(PARTITION) == 10  # the metadata consumer now holds the resolved configuration
    assert made._consumer.config["sasl.password"] == SECRET

    for obj in (CLIENT, fn, _DiscoverPartitionsFn(made, config), _WriteFn("t.out", CLIENT, 1.0, 15.0)):
        data = pickle.dumps(obj)
        assert SECRET.encode() not in data
        assert SECRET_ENV.encode() in data  # only the variable's name travels
