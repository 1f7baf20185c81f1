"""CommitOffsets: an offset moves past a record only when every part of it and of every record before it is in."""

import random
from types import SimpleNamespace
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import Timestamp
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

import kafkaio.commit
from kafkaio.commit import AckLedger, CommitOffsets, _AcksOfBundleFn, _CommitFn
from kafkaio.config import ClientConfig
from schemas.records import Provenance
from tests.unit.conftest import batch_options

TOPIC = "t.raw"
CLIENT = ClientConfig({"bootstrap.servers": "localhost:9092"})


def ack(offset: int, part: int = 0, parts: int = 1, covers_from: int | None = None, partition: int = 0):
    return Provenance(TOPIC, partition, offset if covers_from is None else covers_from, offset, part, parts)


# --- the ledger ------------------------------------------------------------------------------------------------


def test_the_position_waits_for_the_oldest_record():
    ledger = AckLedger(10)
    assert not ledger.acknowledge(ack(11))
    assert not ledger.acknowledge(ack(12))
    assert ledger.position == 10 and len(ledger) == 2
    assert ledger.acknowledge(ack(10))
    assert ledger.position == 13 and len(ledger) == 0


def test_a_record_with_several_outputs_waits_for_all_of_them():
    ledger = AckLedger(0)
    ledger.acknowledge(ack(0, part=0, parts=3))
    ledger.acknowledge(ack(0, part=2, parts=3))
    assert ledger.position == 0
    ledger.acknowledge(ack(0, part=2, parts=3))  # a retried write acknowledges a part twice
    assert ledger.position == 0
    ledger.acknowledge(ack(0, part=1, parts=3))
    assert ledger.position == 1


def test_a_record_covers_the_offsets_without_records_before_it():
    ledger = AckLedger(0)
    ledger.acknowledge(ack(5, covers_from=3))  # offsets 3 and 4: compacted away / transaction markers
    ledger.acknowledge(ack(2, covers_from=0))
    assert ledger.position == 6


def test_acknowledgements_below_the_position_change_nothing():
    ledger = AckLedger(100)
    assert not ledger.acknowledge(ack(99))
    assert ledger.position == 100 and len(ledger) == 0
    # A record whose gap began below the position (the group's offset was inside it) still counts.
    assert ledger.acknowledge(ack(101, covers_from=98))
    assert ledger.position == 102


def test_any_arrival_order_ends_at_the_same_position():
    parts = {offset: 1 + offset % 3 for offset in range(200)}
    acks = [ack(offset, part, n) for offset, n in parts.items() for part in range(n)]
    for seed in range(20):
        random.Random(seed).shuffle(acks)
        ledger = AckLedger(0)
        positions = []
        for a in acks:
            ledger.acknowledge(a)
            positions.append(ledger.position)
        assert positions == sorted(positions)  # never moves back
        assert ledger.position == 200 and len(ledger) == 0
        missing = [a for a in acks if a != ack(150, 0, parts[150])]
        ledger = AckLedger(0)
        for a in missing:
            ledger.acknowledge(a)
        assert ledger.position == 150  # one missing part holds everything after it


# --- the DoFn --------------------------------------------------------------------------------------------------


class FakeConsumer:
    def __init__(self, committed: dict[int, int], fail_commits: int = 0):
        self._committed = committed
        self.fail_commits = fail_commits
        self.commits: list[list[tuple[str, int, int]]] = []
        self.closed = False

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._committed.get(tp.partition, OFFSET_INVALID)) for tp in tps]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> list[Any]:
        assert asynchronous is False
        if self.fail_commits:
            self.fail_commits -= 1
            if self.fail_commits % 2:  # the request fails as a whole
                raise KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT))
            # or partition by partition, reported in the result
            return [SimpleNamespace(error=KafkaError(KafkaError.REBALANCE_IN_PROGRESS)) for _ in offsets]
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        return offsets

    def close(self) -> None:
        self.closed = True


class FakeState:
    def __init__(self) -> None:
        self.value: Any = None

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value


@pytest.fixture
def commit_fn(monkeypatch):
    def make(
        committed: dict[int, int], fail_commits: int = 0, retry_seconds: float = 5.0
    ) -> tuple[_CommitFn, FakeConsumer]:
        consumer = FakeConsumer(committed, fail_commits)
        monkeypatch.setattr(kafkaio.commit, "new_consumer", lambda client, group: consumer)
        fn = _CommitFn(CLIENT, "g", Shared(), retry_seconds=retry_seconds, initial_backoff_seconds=0)
        fn.setup()
        return fn, consumer

    return make


def feed(fn: _CommitFn, states: dict[int, FakeState], acks: list[Provenance]) -> None:
    fn.start_bundle()
    for a in acks:  # one list per ack: the committer is indifferent to how a bundle's acks are grouped
        fn.process((f"{a.partition}:{a.topic}", [a]), ledger_state=states.setdefault(a.partition, FakeState()))
    fn.finish_bundle()


def test_commits_once_per_bundle_only_the_partitions_that_moved(commit_fn):
    fn, consumer = commit_fn({0: 10, 1: 40})
    states: dict[int, FakeState] = {}
    feed(fn, states, [ack(10), ack(11), ack(41, partition=1)])  # partition 1 still waits for offset 40
    assert consumer.commits == [[(TOPIC, 0, 12)]]
    feed(fn, states, [ack(40, partition=1)])
    assert consumer.commits[-1] == [(TOPIC, 1, 42)]
    feed(fn, states, [ack(5)])  # an old duplicate: no commit
    assert len(consumer.commits) == 2
    fn.teardown()
    assert consumer.closed


def test_a_failed_commit_is_retried_then_fails_the_bundle(commit_fn):
    fn, consumer = commit_fn({0: 0}, fail_commits=4)  # two whole-request and two per-partition failures
    feed(fn, {}, [ack(0)])
    assert consumer.commits == [[(TOPIC, 0, 1)]]
    fn, consumer = commit_fn({0: 0}, fail_commits=10**9, retry_seconds=0.2)
    with pytest.raises(KafkaException):
        feed(fn, {}, [ack(0)])


def test_acknowledgements_for_a_partition_the_group_never_started_are_refused(commit_fn):
    fn, _ = commit_fn({})
    with pytest.raises(RuntimeError, match="group g has no offset for t.raw\\[0\\]"):
        feed(fn, {}, [ack(0)])


def test_the_transform_keeps_a_ledger_per_partition_in_beam_state(monkeypatch):
    consumer = FakeConsumer({0: 0, 1: 3})
    monkeypatch.setattr(kafkaio.commit, "new_consumer", lambda client, group: consumer)  # the runner is in-process
    acks = [ack(n, partition=0) for n in range(5)] + [ack(n, partition=1) for n in (3, 4, 6)]  # 5 never written
    with TestPipeline(options=batch_options()) as p:
        _ = p | beam.Create(acks) | CommitOffsets(CLIENT, "g")
    final: dict[int, int] = {}
    for commit in consumer.commits:
        for _, partition, offset in commit:
            assert offset > final.get(partition, -1)  # commits only move forward
            final[partition] = offset
    assert final == {0: 5, 1: 5}


def test_instances_in_one_worker_share_the_ledger_even_if_the_state_forgets(commit_fn):
    """Prism was seen to drop the state of a key's first bundle: the worker's copy carries on."""
    fn, consumer = commit_fn({0: 0})
    other = _CommitFn(CLIENT, "g", fn._shared)
    other.setup()
    feed(fn, {}, [ack(1)])  # offset 0 still missing
    feed(other, {}, [ack(0)])  # a fresh (empty) state, another instance: the shared ledger still has offset 1
    assert consumer.commits == [[(TOPIC, 0, 2)]]


def test_a_ledger_with_nothing_pending_is_still_the_ledger(commit_fn):
    """An empty ledger read back from state is used, not replaced by the group's (possibly older) offset."""
    fn, consumer = commit_fn({0: 0})
    state = FakeState()
    state.value = AckLedger(7)  # e.g. the commit of 7 failed, the state kept the position
    fn._ledgers.by_partition.clear()
    feed(fn, {0: state}, [ack(7)])
    assert consumer.commits == [[(TOPIC, 0, 8)]]


def test_a_bundles_acknowledgements_cross_the_shuffle_as_one_list_per_partition():
    fn = _AcksOfBundleFn()
    fn.start_bundle()
    for a, seconds in ((ack(7), 30), (ack(2, partition=1), 10), (ack(8), 20)):
        fn.process(a, timestamp=Timestamp(seconds))
    out = {wv.value[0]: (wv.value[1], wv.timestamp, wv.windows) for wv in fn.finish_bundle()}
    assert out == {
        f"0:{TOPIC}": ([ack(7), ack(8)], Timestamp(20), (GlobalWindow(),)),  # the earliest timestamp of the list
        f"1:{TOPIC}": ([ack(2, partition=1)], Timestamp(10), (GlobalWindow(),)),
    }
    fn.start_bundle()
    assert list(fn.finish_bundle()) == []  # nothing carried over from the last bundle
