"""One fault case: the live pipeline on Prism following a topic of its own under a steady generated load, a
fault injected and restored, then the reconciliation by record id and the time the backlog took to drain."""

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from beam_pipelines.settings import PipelineSettings, load_settings
from ingestion.generator import GeneratedRecord, GeneratorConfig, generate
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import ProducerSettings, Publisher
from runners.live import committed_offsets, end_offsets, registry_for, summarize
from runners.reconcile import Reconciliation
from runners.stack.kafka import ensure_topics, pipeline_topics
from tests.faults.conftest import FAULT_STACK, FaultStack

REPO = Path(__file__).resolve().parents[2]
RATE = 150  # events/s of steady load
RESULTS: list[str] = []  # one table row per case, printed at the end of the session


def case_settings(stack: FaultStack, *overrides: str) -> PipelineSettings:
    run = uuid.uuid4().hex[:8]
    base = load_settings()
    sets = [
        f"kafka.bootstrap_servers={FAULT_STACK.kafka_bootstrap}",
        f"kafka.input_topic=fault-{run}.raw",
        f"kafka.consumer_group=fault-{run}-pipeline",
        f"registry.url={FAULT_STACK.registry_url}",
        f"stores.postgres_dsn={stack.postgres.dsn}",
        f"stores.redis_url=redis://{FAULT_STACK.host}:{FAULT_STACK.redis_port}/0",
        *(f"kafka.output_topics.{name}=fault-{run}.{name}" for name in base.kafka.output_topics),
        *overrides,
    ]
    settings = load_settings(overrides=tuple(sets))
    ensure_topics(FAULT_STACK.kafka_bootstrap, pipeline_topics(settings), partitions=3)
    return settings


def cli(settings: PipelineSettings, stack: FaultStack, overrides: tuple[str, ...]) -> list[str]:
    sets = [
        f"kafka.bootstrap_servers={settings.kafka.bootstrap_servers}",
        f"kafka.input_topic={settings.kafka.input_topic}",
        f"kafka.consumer_group={settings.kafka.consumer_group}",
        f"registry.url={settings.registry.url}",
        f"stores.postgres_dsn={settings.stores.postgres_dsn.get_secret_value()}",
        f"stores.redis_url={settings.stores.redis_url}",
        f"runner.prism_job_endpoint={stack.prism.endpoint}",
        *(f"kafka.output_topics.{n}={t}" for n, t in settings.kafka.output_topics.items()),
        *overrides,
    ]
    return [sys.executable, "-m", "runners", *[a for s in sets for a in ("--set", s)], "--events", "0", "--follow"]


class Load(threading.Thread):
    """Publishes generated records at ``RATE`` through the ingestion publisher (acks=all, waits out outages)."""

    def __init__(self, settings: PipelineSettings, records: list[GeneratedRecord]):
        super().__init__(daemon=True, name="load")
        self._publisher = Publisher(
            settings.kafka.client_config(),
            settings.kafka.input_topic,
            registry_for(settings),
            ProducerSettings(),
            IngestionMetrics(),
        )
        self._records = records
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        for i, record in enumerate(self._records):
            if self.stop.is_set():
                return
            time.sleep(max(0.0, started + i / RATE - time.monotonic()))
            self._publisher.publish_framed(record.key, record.value, min(record.arrival_ms, now_ms))

    def finish(self) -> int:
        """Stop publishing; the number of records Kafka never acknowledged (they are not in the input)."""
        self.stop.set()
        self.join(timeout=30)
        return self._publisher.close(120)


def sample(settings: PipelineSettings, seed: int, events: int, **shares: float) -> list[GeneratedRecord]:
    now_ms = int(time.time() * 1000)
    config = GeneratorConfig(seed=seed, events=events, **shares)
    config = dataclasses.replace(config, start_ms=now_ms - config.duration_seconds * 1000 - 1_800_000)
    return generate(config, registry_for(settings), now_ms=now_ms)


def wait_committed(settings: PipelineSettings, target: dict[int, int], timeout: float) -> float:
    """Seconds until the group's committed offsets reach ``target`` (raises after ``timeout``)."""
    topic = settings.kafka.input_topic
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        committed = committed_offsets(settings, topic, list(target))
        if all(committed.get(p, 0) >= end for p, end in target.items()):
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"committed offsets did not reach {target} within {timeout:.0f}s")


class Pipeline:
    """``python -m runners --follow`` as a subprocess, restartable (after Prism or the launcher is killed)."""

    def __init__(self, settings: PipelineSettings, stack: FaultStack, overrides: tuple[str, ...] = ()):
        self._argv = cli(settings, stack, overrides)
        self.logs: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self._argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> int:
        """SIGTERM (cancel; offsets of complete records are committed); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=90)
        self.logs.append(out)
        return self.proc.returncode


def run_case(
    name: str,
    stack: FaultStack,
    fault: Callable[[], None],
    restore: Callable[[], None],
    *,
    outage_seconds: float = 20.0,
    events: int = 6000,
    overrides: tuple[str, ...] = (),
    records: Callable[[PipelineSettings], list[GeneratedRecord]] | None = None,
    after_restore: Callable[["Pipeline"], None] | None = None,
) -> Reconciliation:
    """Load for a few seconds, ``fault()``, wait ``outage_seconds``, ``restore()``; then measure the time until
    every record published before the restore is completely written, drain, stop, reconcile."""
    settings = case_settings(stack, *overrides)
    load = Load(settings, records(settings) if records else sample(settings, seed=hash(name) % 1000, events=events))
    pipeline = Pipeline(settings, stack, overrides)
    pipeline.start()
    load.start()
    try:
        wait_committed(settings, {0: 1, 1: 1, 2: 1}, 180)  # the job runs and commits
        time.sleep(3)
        fault()
        time.sleep(outage_seconds)
        restore()
        if after_restore:
            after_restore(pipeline)
        restored_at_end = end_offsets(settings, settings.kafka.input_topic)
        recovery = wait_committed(settings, restored_at_end, 240)
        unacked = load.finish()
        wait_committed(settings, end_offsets(settings, settings.kafka.input_topic), 180)
    finally:
        load.stop.set()
        code = pipeline.stop()
    end = end_offsets(settings, settings.kafka.input_topic)
    summary = summarize(settings, registry_for(settings), {}, end, {n: {} for n in settings.output_names()}, 1.0)
    rec = summary.reconciliation
    RESULTS.append(
        f"| {name} | {rec.records_in} | {rec.routed} | {rec.dead_lettered} | {rec.filtered} | "
        f"{sum(rec.duplicates.values())} | {len(rec.lost)} | {recovery:.1f} s |"
    )
    print(RESULTS[-1], rec.line(), f"(launcher exit {code}, unacknowledged by Kafka {unacked})")
    assert rec.ok, rec.line()
    assert not rec.lost and rec.records_in == sum(end.values())
    return rec
