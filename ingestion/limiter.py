"""Adaptive rate limiting (AIMD): slow publishing when the pipeline falls behind, never drop.

Every ``interval`` the limiter reads a pressure signal (consumer lag of the pipeline, optionally its
end-to-end latency). Above the threshold the rate is cut multiplicatively; below it, it grows by a
fixed step, between a floor and a ceiling: the TCP-style controller converges on the rate the
pipeline sustains. The token bucket makes callers wait for permits; nothing is ever discarded.
"""

import threading
import time
from collections.abc import Callable
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LimiterSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_rate: float = Field(2_000.0, gt=0, description="Events/s to start at.")
    min_rate: float = Field(50.0, gt=0, description="Floor: the rate never drops below this (no starvation).")
    max_rate: float = Field(50_000.0, gt=0, description="Ceiling for the additive increase.")
    increase_step: float = Field(200.0, gt=0, description="Events/s added per healthy interval.")
    decrease_factor: float = Field(0.5, gt=0, lt=1, description="Rate multiplier per interval under pressure.")
    interval_seconds: float = Field(1.0, gt=0, description="How often the signal is read and the rate adjusted.")
    max_lag: int = Field(10_000, ge=0, description="Consumer lag (messages) above which the pipeline is 'behind'.")
    max_latency_seconds: float = Field(
        1.0, gt=0, description="End-to-end latency above which the pipeline is 'behind'."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "LimiterSettings":
        if not self.min_rate <= self.initial_rate <= self.max_rate:
            raise ValueError("need min_rate <= initial_rate <= max_rate")
        return self


class PressureSignal(Protocol):
    """A downstream health reading; ``None`` when it cannot be read right now (then nothing changes)."""

    def read(self) -> float | None: ...


class AimdRateLimiter:
    """A token bucket whose rate an AIMD controller adjusts from pressure signals."""

    def __init__(
        self,
        settings: LimiterSettings,
        signals: dict[str, tuple[PressureSignal, float]],
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[float], None] | None = None,
    ):
        """``signals`` maps a name to (signal, threshold): any signal above its threshold means pressure."""
        self._settings = settings
        self._signals = signals
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self.rate = settings.initial_rate
        self._tokens = 0.0
        self._last_refill = clock()
        self._last_adjust = clock()
        if on_change:
            on_change(self.rate)

    def adjust(self) -> float:
        """Read every signal once and move the rate; returns the new rate."""
        readings = {name: signal.read() for name, (signal, _) in self._signals.items()}
        known = {name: value for name, value in readings.items() if value is not None}
        s = self._settings
        with self._lock:
            if any(value > self._signals[name][1] for name, value in known.items()):
                self.rate = max(s.min_rate, self.rate * s.decrease_factor)
            elif known or not self._signals:
                self.rate = min(s.max_rate, self.rate + s.increase_step)
            rate = self.rate
        if self._on_change:
            self._on_change(rate)
        return rate

    def maybe_adjust(self) -> None:
        now = self._clock()
        if now - self._last_adjust >= self._settings.interval_seconds:
            self._last_adjust = now
            self.adjust()

    def acquire(self, permits: int = 1, sleep: Callable[[float], None] = time.sleep) -> None:
        """Block until ``permits`` events may be sent at the current rate."""
        while True:
            self.maybe_adjust()
            with self._lock:
                now = self._clock()
                burst = max(1.0, self.rate * 0.1)  # at most 100 ms worth of events at once
                self._tokens = min(burst, self._tokens + (now - self._last_refill) * self.rate)
                self._last_refill = now
                if self._tokens >= permits or (permits > burst and self._tokens >= burst):
                    self._tokens -= permits
                    return
                wait = (min(permits, burst) - self._tokens) / self.rate
            # at least 1 ms: a float-rounding shortfall must not become a busy loop of zero-length sleeps
            sleep(min(max(wait, 0.001), self._settings.interval_seconds))
