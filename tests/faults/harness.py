"""One fault case: the live pipeline on Prism following a topic of its own under a steady generated load, a
fault injected and restored, then the reconciliation by record id and the time the backlog took to drain."""

import dataclasses
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from confluent_kafka import KafkaException

from beam_pipelines.settings import PipelineSettings, load_settings
from ingestion.generator import GeneratedRecord, GeneratorConfig, generate
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import ProducerSettings, Publisher
from runners.live import LiveSummary, committed_offsets, end_offsets, export_worker_secrets, registry_for, summarize
from runners.stack.kafka import ensure_topics, pipeline_topics
from runners.stack.process import stack_path
from tests.faults.conftest import FAULT_STACK, FaultStack

REPO = Path(__file__).resolve().parents[2]
RATE = 150  # events/s of steady load
#: Generator kinds the pipeline dead-letters (contract violations, bad framing, events too old, an event's second
#: record): an outage adds none.
_MAY_BE_DEAD_LETTERED = ("invalid", "malformed", "too_late", "duplicate")
RESULTS: list[str] = []
#: Registry basic auth of every case (our registry accepts any): neither it nor the PostgreSQL password of the
#: DSN may appear in a run's log, where an outage makes the workers log their errors.
REGISTRY_SECRET = f"s3cret-{uuid.uuid4().hex}"  # one table row per case, printed at the end of the session


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
        f"registry.basic_auth=fault:{REGISTRY_SECRET}",
        *(f"kafka.output_topics.{name}=fault-{run}.{name}" for name in base.kafka.output_topics),
        *overrides,
    ]
    settings = load_settings(overrides=tuple(sets))
    export_worker_secrets(settings)  # for this process's registry client (the load); the launcher exports its own
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
        f"registry.basic_auth={settings.registry.basic_auth.get_secret_value()}",
        f"runner.prism_job_endpoint={stack.prism.endpoint}",
        *(f"kafka.output_topics.{n}={t}" for n, t in settings.kafka.output_topics.items()),
        *overrides,
    ]
    return [sys.executable, "-m", "runners", *[a for s in sets for a in ("--set", s)], "--events", "0", "--follow"]


class Load(threading.Thread):
    """Publishes generated records at ``RATE`` through the ingestion publisher (acks=all, waits out outages).

    Once ``faulted`` is set, record i comes from ``fault_records`` (when given) instead: a case can make the
    pipeline meet something new during the outage, such as a writer schema it has not fetched yet.
    """

    def __init__(
        self,
        settings: PipelineSettings,
        records: list[GeneratedRecord],
        fault_records: list[GeneratedRecord] | None = None,
    ):
        super().__init__(daemon=True, name="load")
        self._publisher = Publisher(
            settings.kafka.client_config(),
            settings.kafka.input_topic,
            registry_for(settings),
            ProducerSettings(),
            IngestionMetrics(),
        )
        self._records = records
        self._fault_records = fault_records
        self.stop = threading.Event()
        self.faulted = threading.Event()
        self.published: Counter = Counter()  # generator kinds (valid, invalid, malformed, ...) published

    def run(self) -> None:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        for i, record in enumerate(self._records):
            if self.stop.is_set():
                return
            time.sleep(max(0.0, started + i / RATE - time.monotonic()))
            if self._fault_records and self.faulted.is_set():
                record = self._fault_records[i]
            self._publisher.publish_framed(record.key, record.value, min(record.arrival_ms, now_ms))
            self.published[record.kind] += 1

    def finish(self) -> int:
        """Stop publishing; the number of records Kafka never acknowledged (they are not in the input)."""
        self.stop.set()
        self.join(timeout=30)
        return self._publisher.close(120)

    @property
    def failed(self) -> int:
        """Records whose delivery failed: a load that lost records would test less than the case says."""
        return self._publisher.failed


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
        try:
            committed = committed_offsets(settings, topic, list(target))
        except KafkaException:  # a broker just restarted: its group coordinator is still loading
            committed = {}
        if all(committed.get(p, 0) >= end for p, end in target.items()):
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"committed offsets did not reach {target} within {timeout:.0f}s")


class Pipeline:
    """``python -m runners --follow`` as a subprocess, restartable (after Prism or the launcher is killed).

    Its output goes to a file, not a pipe: an outage makes the workers log a warning per retry, and a pipe
    that nobody reads until the end fills up and blocks the logging worker threads, stalling the job.
    """

    def __init__(self, settings: PipelineSettings, stack: FaultStack, log_file: Path, overrides: tuple[str, ...] = ()):
        self._argv = cli(settings, stack, overrides)
        self.log_file = log_file
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_file.open("a") as log:
            self.proc = subprocess.Popen(self._argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> int:
        """SIGTERM (cancel; offsets of complete records are committed); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=90)
        return self.proc.returncode

    def threads(self) -> str:
        """py-spy's dump of the launcher's threads, its LOOPBACK workers among them: where a stalled job waits."""
        if self.proc is None or self.proc.poll() is not None:
            return "(the launcher is not running)"
        spy = [str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(self.proc.pid)]
        try:
            done = subprocess.run(spy, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(py-spy dump failed: {exc})"
        return done.stdout + done.stderr

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def run_case(
    name: str,
    stack: FaultStack,
    fault: Callable[[], None],
    restore: Callable[[], None],
    *,
    outage_seconds: float = 20.0,
    events: int = 6000,
    overrides: tuple[str, ...] = (),
    shares: dict[str, float] | None = None,
    fault_records: Callable[[PipelineSettings], list[GeneratedRecord]] | None = None,
    after_restore: Callable[["Pipeline"], None] | None = None,
) -> LiveSummary:
    """Load for a few seconds, ``fault()``, wait ``outage_seconds``, ``restore()``; then measure the time until
    every record published before the restore is completely written, drain, stop, reconcile."""
    settings = case_settings(stack, *overrides)
    seed = zlib.crc32(name.encode()) % 1000
    load = Load(
        settings,
        sample(settings, seed=seed, events=events, **(shares or {})),
        fault_records(settings) if fault_records else None,
    )
    log_file = stack_path("fault-pipeline", f"{settings.kafka.input_topic}.log")
    pipeline = Pipeline(settings, stack, log_file, overrides)
    pipeline.start()
    load.start()
    try:
        wait_committed(settings, {0: 1, 1: 1, 2: 1}, 180)  # the job runs and commits
        time.sleep(3)
        fault()
        load.faulted.set()
        time.sleep(outage_seconds)
        restore()
        if after_restore:
            after_restore(pipeline)
        restored_at_end = end_offsets(settings, settings.kafka.input_topic)
        recovery = wait_committed(settings, restored_at_end, 240)
        unacked = load.finish()
        wait_committed(settings, end_offsets(settings, settings.kafka.input_topic), 180)
    except AssertionError:
        print(f"--- last lines of the pipeline's log {log_file}:\n{pipeline.tail()}")
        print(f"--- the launcher's threads:\n{pipeline.threads()}")
        raise
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
    print(RESULTS[-1], rec.line(), f"(launcher exit {code}, unacknowledged by Kafka {unacked}, failed {load.failed})")
    print(f"  enrichment {dict(summary.enrichment)}; dead letters {dict(summary.dead_letter_codes)}")
    assert rec.ok, rec.line()
    assert load.failed == 0 and unacked == 0, f"the load lost {load.failed} records and left {unacked} in doubt"
    assert code == 0, f"the launcher did not end cleanly (exit {code}):\n{pipeline.tail()}"
    assert not rec.lost and rec.records_in == sum(end.values())
    log = log_file.read_text(errors="replace")
    password = urlsplit(stack.postgres.dsn).password
    assert REGISTRY_SECRET not in log and f":{password}@" not in log, f"a secret is in {log_file}"
    bad = sum(load.published[kind] for kind in _MAY_BE_DEAD_LETTERED)
    assert rec.dead_lettered <= bad, f"{rec.dead_lettered} dead letters for {bad} bad records: the outage made some"
    return summary
