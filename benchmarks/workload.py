"""The end-to-end benchmark's one workload: a generated raw topic every system reads, and what each output must
hold afterwards (from the generator's labels and the contract's rules), so a fast but wrong system shows."""

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass

from confluent_kafka import Producer

from benchmarks.peers.work import GRACE_MS, HIGH_VALUE_MINOR, ORDER_TYPES, WINDOW_MS
from ingestion.generator import GeneratedRecord, GeneratorConfig, generate
from schemas.registry import SchemaRegistry

#: Kinds whose events are valid (routed); "too_late" is routed but too late for any window.
ROUTED_KINDS = ("valid", "late", "too_late")


#: How far ahead "from the future" invalid events claim to be: a 500k ``make bench`` takes well over an hour on
#: a slow machine, and the rules compare with the wall clock, so an event an hour ahead of the publish time
#: turned valid for the systems that read it last (their verdicts were WRONG by those events).
FUTURE_SECONDS = 30 * 24 * 3600


def workload_config(events: int, seed: int = 11) -> GeneratorConfig:
    """The issue's mix: ~5% invalid (4% contract violations + 1% bad bytes), ~3% late, no resends (not every
    peer deduplicates); its invalid events stay invalid for as long as any benchmark runs."""
    return GeneratorConfig(
        seed=seed,
        events=events,
        invalid_share=0.04,
        malformed_share=0.01,
        late_share=0.03,
        too_late_share=0.005,
        duplicate_share=0.0,
        future_seconds=FUTURE_SECONDS,
    )


@dataclass(frozen=True)
class Expected:
    """What every system's outputs must hold for the workload."""

    records: int
    per_record: dict[str, int]  # output -> records: events, orders, high_value_alerts, filtered, dead_letters
    window_cut_ms: int  # windows starting before this are closed in every system by the end of the input
    window_events: int  # events counted by the closed windows

    def per_record_total(self) -> int:
        return self.per_record["events"] + self.per_record["filtered"] + self.per_record["dead_letters"]


def expected_outputs(records: list[GeneratedRecord]) -> Expected:
    kinds = Counter(r.kind for r in records)
    routed = [r.event for r in records if r.kind in ROUTED_KINDS]
    # A window is closed everywhere once events a window + grace past its end have been read.
    cut = max(e.event_time for e in routed) - WINDOW_MS - GRACE_MS - WINDOW_MS
    windowed = [r.event for r in records if r.kind in ("valid", "late")]
    return Expected(
        records=len(records),
        per_record={
            "events": len(routed),
            "orders": sum(e.event_type in ORDER_TYPES for e in routed),
            "high_value_alerts": sum((e.amount_minor or 0) >= HIGH_VALUE_MINOR for e in routed),
            "filtered": kinds["bot"] + kinds["test_user"],
            "dead_letters": kinds["invalid"] + kinds["malformed"],
        },
        window_cut_ms=cut,
        window_events=sum(e.event_time // WINDOW_MS * WINDOW_MS < cut for e in windowed),
    )


def paced_feed(bootstrap: str, topic: str, records: list[GeneratedRecord], rate: float) -> dict[str, int]:
    """Produces ``records`` at ``rate`` per second (Kafka timestamps = send time); event id -> send time (ms) of
    the routed ones, where the latency is measured from. Paced in 5 ms ticks: a sleep per record would cost the
    feeder more CPU than some systems under test use (both share the same 2 cores)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "acks": "all"})
    sent: dict[str, int] = {}
    started = time.monotonic()
    i = 0
    while i < len(records):
        due = min(len(records), int((time.monotonic() - started) * rate) + 1)
        now_ms = int(time.time() * 1000)
        for record in records[i:due]:
            while True:
                try:
                    producer.produce(topic, value=record.value, key=record.key, timestamp=now_ms)
                    break
                except BufferError:
                    producer.poll(0.01)
            if record.kind in ROUTED_KINDS:
                sent[record.event.event_id] = now_ms
        i = max(i, due)
        producer.poll(0)
        time.sleep(0.005)
    if producer.flush(60):
        raise RuntimeError("the latency feed was not acknowledged by Kafka")
    return sent


def feed_records(config: GeneratorConfig, registry: SchemaRegistry, count: int, seed: int) -> list[GeneratedRecord]:
    """``count`` records of the workload's mix with event times around now, for a paced latency feed."""
    now_ms = int(time.time() * 1000)
    config = dataclasses.replace(config, seed=seed, events=count, start_ms=now_ms - 600_000, duration_seconds=600)
    return generate(config, registry, now_ms=now_ms)
