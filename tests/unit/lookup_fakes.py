"""A dict-backed ``LookupHandler`` with injectable latency and failures: the fake store of the unit tests."""

import asyncio
import threading
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

R = TypeVar("R")


class InMemoryLookupHandler(Generic[R]):
    """A dict-backed handler with injectable latency and failures.

    Deterministic: ``slow_keys`` always take ``slow_latency_seconds``; ``failing_keys`` always raise
    ``RuntimeError(failure_message)``; every key fails its first ``transient_failures`` attempts. Attempts
    are counted per key inside each unpickled copy (the worker's instance), not carried over by pickling.
    """

    def __init__(
        self,
        name: str,
        records: Mapping[str, R],
        latency_seconds: float = 0.0,
        slow_keys: frozenset[str] = frozenset(),
        slow_latency_seconds: float = 5.0,
        failing_keys: frozenset[str] = frozenset(),
        transient_failures: int = 0,
        failure_message: str = "injected failure",
    ) -> None:
        if latency_seconds < 0 or slow_latency_seconds < 0 or transient_failures < 0:
            raise ValueError("latencies and transient_failures must be >= 0")
        self.name = name
        self._records = dict(records)
        self._latency_seconds = latency_seconds
        self._slow_keys = frozenset(slow_keys)
        self._slow_latency_seconds = slow_latency_seconds
        self._failing_keys = frozenset(failing_keys)
        self._transient_failures = transient_failures
        self._failure_message = failure_message
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_attempts"], state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attempts = {}
        self._lock = threading.Lock()

    async def lookup(self, key: str) -> R | None:
        with self._lock:
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
        latency = self._slow_latency_seconds if key in self._slow_keys else self._latency_seconds
        if latency:
            await asyncio.sleep(latency)
        if key in self._failing_keys or attempt <= self._transient_failures:
            raise RuntimeError(self._failure_message)
        return self._records.get(key)
