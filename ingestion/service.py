"""The ingestion core shared by every source: normalise, validate, publish or reject with a reason.

``submit_batch`` is what an HTTP answer rests on: it waits (bounded) for each published event's delivery
report, so "acknowledged" in an answer means Kafka acknowledged it with acks=all, and every other valid
event is reported ``not_acknowledged`` with why: it may or may not be in Kafka, and resending it with the
same ``event_id`` is safe (the pipeline reconciles by event id).
"""

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError
from pydantic import BaseModel, ConfigDict

from ingestion.contract import Rejection, normalize
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import Publisher
from schemas.rules import ValidationConfig

#: How long an HTTP answer waits for Kafka's acknowledgements, and for a slow client's body.
ACK_TIMEOUT_SECONDS = 10.0
BODY_TIMEOUT_SECONDS = 10.0


class Outcome(BaseModel):
    """What happened to one submitted event (the HTTP response carries one per event)."""

    model_config = ConfigDict(frozen=True)

    index: int
    status: str  # "accepted" (queued: replay/generate) | "acknowledged" | "not_acknowledged" | "rejected"
    event_id: str | None = None
    code: str | None = None
    reason: str | None = None


class IngestionService:
    def __init__(
        self,
        publisher: Publisher,
        metrics: IngestionMetrics,
        rules: ValidationConfig | None = None,
        rejects_path: Path | None = None,
    ):
        self.publisher = publisher
        self.metrics = metrics
        self._rules = rules or ValidationConfig()
        self._rejects = open(rejects_path, "a") if rejects_path else None  # noqa: SIM115  closed in close()
        self._rejects_lock = threading.Lock()
        self.rejected = 0

    def submit(self, raw: Any, source: str, index: int = 0) -> Outcome:
        self.metrics.received.labels(source).inc()
        result = normalize(raw, self._rules)
        if isinstance(result, Rejection):
            self._reject(raw, result, source)
            return Outcome(index=index, status="rejected", code=result.code, reason=result.reason)
        self.publisher.publish(result)
        return Outcome(index=index, status="accepted", event_id=result.event_id)

    def submit_batch(self, raws: Sequence[Any], source: str, ack_timeout: float) -> list[Outcome]:
        """Validate and publish ``raws``, then wait up to ``ack_timeout`` seconds for their delivery reports."""
        acks = _DeliveryReports()
        outcomes: dict[int, Outcome] = {}
        published: dict[int, str] = {}
        for index, raw in enumerate(raws):
            self.metrics.received.labels(source).inc()
            result = normalize(raw, self._rules)
            if isinstance(result, Rejection):
                self._reject(raw, result, source)
                outcomes[index] = Outcome(index=index, status="rejected", code=result.code, reason=result.reason)
            else:
                self.publisher.publish(result, acks.expect(index))
                published[index] = result.event_id
        reports = acks.wait(len(published), ack_timeout)
        for index, event_id in published.items():
            if index not in reports:
                reason = f"no delivery report within {ack_timeout:g}s; it may still arrive: resend with this event_id"
                outcomes[index] = Outcome(
                    index=index, status="not_acknowledged", event_id=event_id, code="ack_timeout", reason=reason
                )
            elif reports[index] is not None:
                err = reports[index]
                outcomes[index] = Outcome(
                    index=index, status="not_acknowledged", event_id=event_id, code=err.name(), reason=err.str()
                )
            else:
                outcomes[index] = Outcome(index=index, status="acknowledged", event_id=event_id)
        return [outcomes[i] for i in range(len(raws))]

    def _reject(self, raw: Any, rejection: Rejection, source: str) -> None:
        self.metrics.rejected.labels(rejection.code).inc()
        with self._rejects_lock:
            self.rejected += 1
            if self._rejects:
                line = {"source": source, "code": rejection.code, "reason": rejection.reason, "event": raw}
                self._rejects.write(json.dumps(line, default=str) + "\n")
                self._rejects.flush()

    def close(self, timeout: float = 30.0) -> int:
        """Flush everything; returns the number of events whose delivery is still in doubt."""
        remaining = self.publisher.close(timeout)
        if self._rejects:
            self._rejects.close()
        return remaining


class _DeliveryReports:
    """The delivery reports of one batch, by index, as librdkafka's report thread hands them over."""

    def __init__(self) -> None:
        self._arrived = threading.Condition()
        self._reports: dict[int, KafkaError | None] = {}

    def expect(self, index: int):
        def report(err: KafkaError | None) -> None:
            with self._arrived:
                self._reports[index] = err
                self._arrived.notify_all()

        return report

    def wait(self, count: int, timeout: float) -> dict[int, KafkaError | None]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._reports) < count and (left := deadline - time.monotonic()) > 0:
                self._arrived.wait(left)
            return dict(self._reports)
