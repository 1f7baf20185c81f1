"""The ingestion core shared by every source: normalise, validate, publish or reject with a reason."""

import json
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ingestion.contract import Rejection, normalize
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import Publisher
from schemas.rules import ValidationConfig


class Outcome(BaseModel):
    """What happened to one submitted event (the HTTP response carries one per event)."""

    model_config = ConfigDict(frozen=True)

    index: int
    status: str  # "accepted" | "rejected"
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
