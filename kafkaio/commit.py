"""``CommitOffsets``: a partition's offset is committed only once every output of every record before it is
acknowledged by Kafka.

Why not in the reader's bundle finalizer, as Java KafkaIO does: a runner finalizes a read bundle once it
holds that bundle's output, which is durable on Flink (checkpoints) but only in memory on Prism, so a
killed Prism loses records whose offsets were already committed (measured: 4 of 6000). Counting the
sinks' acknowledgements is durable on every runner: after any crash, every record not completely written
is read again. At-least-once; duplicates after a crash are bounded by the records in flight.

Each record of a per-record output carries a ``Provenance``: its input record and which of that record's
``parts`` outputs it is (an event taking three routes has three parts; a dead letter or a filtered event
one). ``AckLedger`` keeps, per partition, the position to commit and the acknowledged records above it;
the position moves past a record when all its parts are in and every record before it is complete.
Aggregates (window metrics, sessions) are not counted: on a runner without durable state their open
windows restart empty after a crash (Flink restores them from its checkpoint).

The acknowledgements of a bundle cross the shuffle to the committer as one list per partition, not one element
per written record: the runner then moves a few lists per bundle instead of one to three elements per input record.
"""

import logging
import threading

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.shared import Shared
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from confluent_kafka import Consumer, KafkaException, TopicPartition
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from kafkaio.config import ClientConfig
from kafkaio.source import KafkaPartition, new_consumer
from schemas.records import Provenance

_LOG = logging.getLogger(__name__)
_TIMEOUT_S = 10.0
#: How long a commit (or the ledger's first read of the group's offset) is retried while the broker is down
#: or its group coordinator moves; then the bundle fails, and only commits are lost (the records are re-read).
_RETRY_S = 300.0


def _retrying(what: str, seconds: float, initial_backoff: float) -> Retrying:
    """Retries a ``KafkaException`` (a broker restart or coordinator move) with capped backoff for ``seconds``."""

    def log(state) -> None:
        _LOG.warning("%s failed (attempt %d): %s", what, state.attempt_number, state.outcome.exception())

    return Retrying(
        retry=retry_if_exception_type(KafkaException),
        wait=wait_exponential(multiplier=initial_backoff, max=5.0),
        stop=stop_after_delay(seconds),
        before_sleep=log,
        reraise=True,
    )


class AckLedger:
    """One partition's progress: ``position`` (the offset to commit) and the acknowledged records above it."""

    def __init__(self, position: int) -> None:
        self.position = position
        # covers_from -> (offset after the record, parts acknowledged as a bit mask, parts expected)
        self._pending: dict[int, tuple[int, int, int]] = {}

    def __len__(self) -> int:
        """Records above the position with at least one acknowledged part."""
        return len(self._pending)

    def acknowledge(self, ack: Provenance) -> bool:
        """Records one acknowledged part; True when the position moved. Repeated acks (a retried write) are
        harmless: a part is a bit, and records below the position are done."""
        end = ack.offset + 1
        if end <= self.position:
            return False
        start = max(ack.covers_from, self.position)
        _, seen, _ = self._pending.get(start, (end, 0, ack.parts))
        self._pending[start] = (end, seen | (1 << ack.part), ack.parts)
        moved = False
        while self.position in self._pending:
            end, seen, parts = self._pending[self.position]
            if seen != (1 << parts) - 1:
                break
            del self._pending[self.position]
            self.position = end
            moved = True
        return moved


class _Ledgers:
    """This worker's ledgers by partition, one object shared by every instance of the DoFn in the process."""

    def __init__(self) -> None:
        self.by_partition: dict[str, AckLedger] = {}
        self.lock = threading.Lock()


def _partition_key(ack: Provenance) -> str:
    # A str key (a standard coder) so the runner and the SDK agree byte for byte on whose state it is.
    return f"{ack.partition}:{ack.topic}"


class _AcksOfBundleFn(beam.DoFn):
    """A bundle's acknowledgements (global window) as one ``(partition key, [Provenance, ...])`` per partition,
    stamped with the earliest of their timestamps so no element is ahead of what it acknowledges."""

    def start_bundle(self) -> None:
        self._acks: dict[str, list[Provenance]] = {}
        self._earliest: dict[str, Timestamp] = {}

    def process(self, ack: Provenance, timestamp: Timestamp = beam.DoFn.TimestampParam) -> None:
        key = _partition_key(ack)
        self._acks.setdefault(key, []).append(ack)
        self._earliest[key] = min(self._earliest.get(key, timestamp), timestamp)

    def finish_bundle(self):
        for key, acks in self._acks.items():
            yield WindowedValue((key, acks), self._earliest[key], (GlobalWindow(),))


class _CommitFn(beam.DoFn):
    """Keyed by partition: updates the partition's ledger; commits the positions that moved at bundle end.

    The ledger is kept twice: in Beam state, which is what a restore from a Flink checkpoint brings back,
    and in worker memory, because Prism 2.76 was seen to lose the state a key's first bundle wrote: in 4 of
    9 kill/restart runs a partition's commits stalled behind acknowledgements its state had forgotten
    (the next bundle read no ledger); with the worker's copy, 8 of 8 passed.
    Both only ever hold acknowledgements that happened, so using the worker's copy first is always safe.
    """

    LEDGER = ReadModifyWriteStateSpec("ledger", PickleCoder())

    def __init__(
        self,
        client: ClientConfig,
        group_id: str,
        shared: Shared,
        retry_seconds: float = _RETRY_S,
        initial_backoff_seconds: float = 0.2,
    ) -> None:
        self._client = client
        self._group_id = group_id
        self._shared = shared
        self._retry = (retry_seconds, initial_backoff_seconds)

    def setup(self) -> None:
        self._consumer: Consumer = new_consumer(self._client, self._group_id)
        self._ledgers: _Ledgers = self._shared.acquire(_Ledgers)
        self._moved: dict[KafkaPartition, int] = {}
        self._committed = beam.metrics.Metrics.counter("kafkaio", f"offsets_committed[{self._group_id}]")

    def start_bundle(self) -> None:
        self._moved = {}

    def process(self, element: tuple[str, list[Provenance]], ledger_state=beam.DoFn.StateParam(LEDGER)) -> None:
        key, acks = element
        partition = KafkaPartition(acks[0].topic, acks[0].partition)
        with self._ledgers.lock:
            ledger = self._ledgers.by_partition.get(key)
        if ledger is None:
            ledger = ledger_state.read()
        if ledger is None:
            ledger = AckLedger(self._group_position(partition))
        with self._ledgers.lock:
            ledger = self._ledgers.by_partition.setdefault(key, ledger)
            before = ledger.position
            moved = False
            for ack in acks:  # every ack is recorded: no short cut once one moved the position
                moved = ledger.acknowledge(ack) or moved
        if moved:
            self._moved[partition] = ledger.position
            self._committed.inc(ledger.position - before)
        ledger_state.write(ledger)

    def finish_bundle(self) -> None:
        if not self._moved:
            return
        offsets = [TopicPartition(p.topic, p.partition, offset) for p, offset in self._moved.items()]

        def commit() -> None:
            failed = [tp for tp in self._consumer.commit(offsets=offsets, asynchronous=False) if tp.error]
            if failed:
                raise KafkaException(failed[0].error)

        _retrying(f"commit of {offsets}", *self._retry)(commit)

    def teardown(self) -> None:
        self._consumer.close()

    def _group_position(self, partition: KafkaPartition) -> int:
        """Where the ledger starts: the group's offset, which the reader set to its start offset."""
        tp = TopicPartition(partition.topic, partition.partition)
        found = _retrying(f"reading the group offset of {tp}", *self._retry)(
            lambda: self._consumer.committed([tp], timeout=_TIMEOUT_S)[0]
        )
        if found.error is not None:
            raise KafkaException(found.error)
        if found.offset < 0:
            raise RuntimeError(
                f"group {self._group_id} has no offset for {partition.topic}[{partition.partition}]: the reader "
                "commits its start offset before the first record, so these acknowledgements come from a read "
                "with another group"
            )
        return found.offset


class CommitOffsets(beam.PTransform[beam.PCollection[Provenance], beam.PCollection[None]]):
    """Commits ``group_id``'s offsets from the acknowledged outputs' ``Provenance``s (see the module docstring)."""

    def __init__(self, client: ClientConfig, group_id: str) -> None:
        super().__init__()
        self._client = client
        self._group_id = group_id
        # One handle per transform, pickled into its DoFn instances: they share the ledgers, other jobs' do not.
        self._shared = Shared()

    def expand(self, acks: beam.PCollection[Provenance]) -> beam.PCollection[None]:
        return (
            acks
            | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
            | "ByPartition" >> beam.ParDo(_AcksOfBundleFn()).with_output_types(tuple[str, list[Provenance]])
            | "Commit" >> beam.ParDo(_CommitFn(self._client, self._group_id, self._shared))
        )
