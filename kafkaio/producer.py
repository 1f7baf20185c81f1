"""``RecoveringProducer``: a librdkafka producer that replaces itself when it stops delivering.

After a broker restart librdkafka can keep a partition leaderless for good (a produce response naming leader
-1 while the broker shuts down; librdkafka issue #5430, open in 2.16): the producer accepts records for it and
never sends them. Measured in the broker fault case, 1 run in 8 kept a pipeline writer's flush waiting with the
broker back up, and the test's own publisher stopped delivering in another. Nothing but a new client clears it.

So every record is kept until its delivery report. When records are outstanding and the current producer has
reported nothing for ``stall_seconds``, a new producer takes over: the old one's records are purged and sent
again through the new one, each within its own delivery timeout (``delivery.timeout.ms`` /
``message.timeout.ms``, counted from its first send), after which it fails as librdkafka would fail it.
A record the old producer did get written is written twice: at-least-once, as with any producer retry
across a new producer id.
"""

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Producer

_LOG = logging.getLogger(__name__)
_DEFAULT_DELIVERY_TIMEOUT_MS = 300_000  # librdkafka's message.timeout.ms default

#: Called once per record with its final delivery report (error None: acknowledged) and the message.
DeliveryCallback = Callable[[KafkaError | None, Any], None]


class _Outstanding(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None
    on_delivery: DeliveryCallback | None
    give_up_at: float  # monotonic: first send + the delivery timeout


class RecoveringProducer:
    """``produce`` / ``poll`` / ``flush`` / ``len`` as on ``confluent_kafka.Producer``, thread-safe, with the
    stall recovery above; ``replacements`` counts the producers replaced."""

    def __init__(self, config: dict[str, Any], stall_seconds: float = 15.0, name: str = "producer") -> None:
        self._config = dict(config)
        self._stall_seconds = stall_seconds
        self._name = name
        timeout_ms = self._config.get("delivery.timeout.ms", self._config.get("message.timeout.ms"))
        self._delivery_timeout_s = int(timeout_ms or _DEFAULT_DELIVERY_TIMEOUT_MS) / 1000.0
        self._lock = threading.RLock()
        self._producer = Producer(self._config)
        self._outstanding: dict[int, _Outstanding] = {}
        self._numbers = 0
        self._progress_at = time.monotonic()  # last report of the current producer, or start of outstanding
        self.replacements = 0

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        timestamp: int | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Queues one record; raises ``BufferError`` when the local queue is full, as librdkafka does."""
        with self._lock:
            number = self._numbers
            self._numbers += 1
            record = _Outstanding(
                topic, key, value, timestamp, on_delivery, time.monotonic() + self._delivery_timeout_s
            )
            if not self._outstanding:
                self._progress_at = time.monotonic()
            self._send(number, record)  # a BufferError leaves nothing outstanding
            self._outstanding[number] = record

    def poll(self, timeout: float) -> int:
        served = self._producer.poll(timeout)
        self._replace_if_stalled()
        return served

    def flush(self, timeout: float) -> int:
        """Waits up to ``timeout`` for every outstanding record's report; the number still outstanding."""
        deadline = time.monotonic() + timeout
        while True:
            self._producer.flush(max(0.0, min(self._stall_seconds, deadline - time.monotonic())))
            self._replace_if_stalled()
            if not self.outstanding or time.monotonic() >= deadline:
                return self.outstanding

    @property
    def outstanding(self) -> int:
        """Records queued and not yet finally reported."""
        with self._lock:
            return len(self._outstanding)

    def __len__(self) -> int:
        return self.outstanding

    def _send(self, number: int, record: _Outstanding) -> None:
        extra = {} if record.timestamp_ms is None else {"timestamp": record.timestamp_ms}
        self._producer.produce(
            record.topic,
            value=record.value,
            key=record.key,
            on_delivery=functools.partial(self._report, self._producer, number),
            **extra,
        )

    def _report(self, producer: Producer, number: int, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            current = producer is self._producer
            if current:
                self._progress_at = time.monotonic()
            record = self._outstanding.get(number)
            if record is None or (err is not None and not current):
                return  # reported already, or purged from a replaced producer (sent again by the new one)
            del self._outstanding[number]
        if record.on_delivery is not None:
            record.on_delivery(err, msg)

    def _replace_if_stalled(self) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._outstanding or now - self._progress_at < self._stall_seconds:
                return
            stuck, self._producer = self._producer, Producer(self._config)
            self._progress_at = now
            self.replacements += 1
            expired = {n: r for n, r in self._outstanding.items() if r.give_up_at <= now}
            for number in expired:
                del self._outstanding[number]
            _LOG.warning(
                "%s: no delivery report for %.0f s with %d records outstanding: replacing the producer, sending "
                "them again%s",
                self._name,
                self._stall_seconds,
                len(self._outstanding),
                f" ({len(expired)} past their delivery timeout fail)" if expired else "",
            )
            for number, record in list(self._outstanding.items()):
                self._send(number, record)
        stuck.purge()
        stuck.poll(0)  # serves the purged records' reports, which _report ignores
        for record in expired.values():
            if record.on_delivery is not None:
                record.on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT), None)
