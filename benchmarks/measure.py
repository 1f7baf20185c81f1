"""What the end-to-end benchmark measures of a system under test: CPU seconds and peak RSS of its processes
(read from /proc, children included), how far its outputs have got (Kafka end offsets) and when they were
written (first and last record timestamps)."""

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from beam_pipelines.settings import PipelineSettings
from runners.live import end_offsets_of

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    found = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their descendants that are alive now."""
    seen, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in seen and os.path.exists(f"/proc/{pid}"):
            seen.append(pid)
            todo += _children(pid)
    return seen


def _cpu_and_rss(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds of the process and its reaped children, resident bytes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0
    # After the command: state(0) ... utime(11) stime(12) cutime(13) cstime(14) ... rss(21)
    cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK
    return cpu, int(fields[21]) * _PAGE


class ResourceSampler:
    """Samples a process tree every ``interval`` s: CPU seconds used since ``start`` and the peak summed RSS.

    CPU of a process that exits between samples is lost unless its parent reaps it (then it is in the parent's
    cutime); the systems here keep their processes for the whole run, so the loss is at most one interval's.
    """

    def __init__(self, roots: list[int], interval: float = 0.25):
        self._roots = roots
        self._interval = interval
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add_root(self, pid: int) -> None:
        self._roots.append(pid)

    def start(self) -> "ResourceSampler":
        for pid in process_tree(self._roots):
            self._base[pid] = _cpu_and_rss(pid)[0]
        self._thread.start()
        return self

    def _sample(self) -> None:
        rss = 0
        for pid in process_tree(self._roots):
            cpu, resident = _cpu_and_rss(pid)
            self._base.setdefault(pid, 0.0)  # a process born during the run counts from zero
            self._last[pid] = cpu
            rss += resident
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def stop(self) -> float:
        """Stops sampling; the CPU seconds the tree used while sampled."""
        self._sample()
        self._stop.set()
        self._thread.join()
        return sum(max(0.0, cpu - self._base[pid]) for pid, cpu in self._last.items())


@dataclass(frozen=True)
class TopicSpan:
    records: int  # records in the topic
    first_ms: int | None  # the smallest timestamp of a partition's first record
    last_ms: int | None  # the largest timestamp of a partition's last record


def topic_span(bootstrap: str, topic: str) -> TopicSpan:
    """Count and the first/last record timestamps of ``topic``: reads only each partition's first and last record."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-span", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        records, firsts, lasts = 0, [], []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            records += high - low
            for offset, into in ((low, firsts), (high - 1, lasts)):
                consumer.assign([TopicPartition(topic, p, offset)])
                msg = consumer.poll(10)
                if msg is None or msg.error():
                    raise RuntimeError(f"cannot read {topic}[{p}]@{offset}")
                into.append(msg.timestamp()[1])
        return TopicSpan(records, min(firsts, default=None), max(lasts, default=None))
    finally:
        consumer.close()


def records_in(settings: PipelineSettings, topics: list[str]) -> dict[str, int]:
    """Records per topic: its end offsets summed (the benchmark's topics are new, so they start at 0)."""
    return {topic: sum(ends.values()) for topic, ends in end_offsets_of(settings, topics).items()}


def wait_for_records(
    settings: PipelineSettings, topics: list[str], expected: int, timeout: float, alive=lambda: True
) -> float:
    """Waits until ``topics`` hold ``expected`` records together; the seconds it took. Raises on timeout or when
    ``alive()`` turns False (the system under test died)."""
    started = time.monotonic()
    while True:
        have = sum(records_in(settings, topics).values())
        if have >= expected:
            return time.monotonic() - started
        if not alive():
            raise RuntimeError(f"the system exited with {have}/{expected} records written")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{have}/{expected} records written after {timeout:.0f}s")
        time.sleep(0.5)
