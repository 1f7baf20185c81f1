"""The live run: a generated sample published to Kafka, the pipeline on Prism from Kafka to Kafka, read back.

``run_live`` publishes the sample through the ingestion publisher (Kafka timestamp = the record's
simulated arrival time, so the source's log-append-time watermark sees late and too-late data as a
broker would), runs the pipeline with the native Kafka IO until the input present at launch is read
and every output flushed (or for ``duration`` seconds, or until SIGTERM/Ctrl-C when following), prints
progress every few seconds, then reads every output topic back and reconciles by record id.
"""

import dataclasses
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from beam_pipelines.clickstream import Lookups, build_pipeline, output_contract
from beam_pipelines.settings import POSTGRES_DSN_ENV, REGISTRY_AUTH_ENV, PipelineSettings
from ingestion.generator import GeneratedRecord, GeneratorConfig, generate
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import ProducerSettings, Publisher
from kafkaio import ClientConfig, CommitOffsets, ReadConfig, ReadFromKafka, WriteToKafka
from kafkaio.source import watermark_offsets
from runners import beam_metrics
from runners.reconcile import InputRecord, Reconciliation, reconcile
from schemas.catalog import schema_json
from schemas.registry import ConfluentRegistry, SchemaRegistry
from schemas.secrets import EnvSecret
from schemas.serde import ConfluentAvroSerde, SerdeError
from transforms.lookups import PostgresUserLookup, RedisProductLookup

_LOG = logging.getLogger(__name__)
Offsets = dict[int, int]
#: Pipeline states after which a job never runs again.
ENDED_STATES = {PipelineState.DONE, PipelineState.FAILED, PipelineState.CANCELLED, PipelineState.UPDATED}


def registry_for(settings: PipelineSettings) -> ConfluentRegistry:
    """The registry client for this process and the graph: its credentials by environment variable only."""
    auth = EnvSecret(REGISTRY_AUTH_ENV) if settings.registry.basic_auth else None
    return ConfluentRegistry(settings.registry.url, auth)


def export_worker_secrets(settings: PipelineSettings) -> None:
    """Put the credentials where this process's LOOPBACK workers (and its own clients) read them."""
    for env, secret in settings.worker_secrets().items():
        os.environ[env] = secret.get_secret_value()


def kafka_client(settings: PipelineSettings) -> ClientConfig:
    """The Kafka client for workers: secrets by environment variable only."""
    return ClientConfig(settings.kafka.public_client_config(), settings.kafka.secret_env())


# --- Kafka helpers (this process) ------------------------------------------------------------------------------


def _consumer(settings: PipelineSettings, group: str) -> Consumer:
    return Consumer({**settings.kafka.client_config(), "group.id": group, "enable.auto.commit": False})


def end_offsets_of(settings: PipelineSettings, topics: list[str]) -> dict[str, Offsets]:
    """Each topic's end offsets per partition, read with one consumer."""
    consumer = _consumer(settings, "clickstream-live-inspector")
    try:
        ends = {}
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            if metadata.error is not None:
                raise RuntimeError(f"topic {topic}: {metadata.error.str()} (`make up` creates the pipeline's topics)")
            ends[topic] = {p: watermark_offsets(consumer, TopicPartition(topic, p))[1] for p in metadata.partitions}
        return ends
    finally:
        consumer.close()


def end_offsets(settings: PipelineSettings, topic: str) -> Offsets:
    return end_offsets_of(settings, [topic])[topic]


def committed_offsets(settings: PipelineSettings, topic: str, partitions: list[int]) -> Offsets:
    """The pipeline group's committed offsets (partitions without a commit are left out)."""
    consumer = _consumer(settings, settings.kafka.consumer_group)
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}
    finally:
        consumer.close()


def start_offsets(settings: PipelineSettings, topic: str) -> Offsets:
    """Where the pipeline will start: the group's committed offsets, else the earliest retained."""
    consumer = _consumer(settings, "clickstream-live-inspector")
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        low = {p: watermark_offsets(consumer, TopicPartition(topic, p))[0] for p in partitions}
    finally:
        consumer.close()
    return {**low, **committed_offsets(settings, topic, partitions)}


def read_range(settings: PipelineSettings, topic: str, start: Offsets, end: Offsets) -> list[Any]:
    """Every message of ``topic`` in [start, end) per partition."""
    wanted = {p: (start.get(p, 0), e) for p, e in end.items() if e > start.get(p, 0)}
    if not wanted:
        return []
    consumer = _consumer(settings, "clickstream-live-inspector")
    consumer.assign([TopicPartition(topic, p, s) for p, (s, _) in wanted.items()])
    messages, done = [], set()
    deadline = time.monotonic() + 120
    try:
        while len(done) < len(wanted) and time.monotonic() < deadline:
            for message in consumer.consume(1000, 1.0):
                if message.error() is not None:
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(f"reading {topic}: {message.error()}")
                    continue
                first, stop = wanted[message.partition()]
                if message.offset() < stop:
                    messages.append(message)
                if message.offset() >= stop - 1:
                    done.add(message.partition())
    finally:
        consumer.close()
    if len(done) < len(wanted):
        raise RuntimeError(f"reading {topic} back timed out ({len(messages)} records read)")
    return messages


# --- the sample -----------------------------------------------------------------------------------------------


def publish_sample(
    settings: PipelineSettings, config: GeneratorConfig, registry: SchemaRegistry
) -> list[GeneratedRecord]:
    """A sample anchored at the current time, published with acks=all; raises unless Kafka acknowledged all."""
    now_ms = int(time.time() * 1000)
    config = dataclasses.replace(config, start_ms=now_ms - config.duration_seconds * 1000 - 1_800_000)
    records = generate(config, registry, now_ms=now_ms)
    publisher = Publisher(
        settings.kafka.client_config(), settings.kafka.input_topic, registry, ProducerSettings(), IngestionMetrics()
    )
    for record in records:
        # An event claiming to come from the future "arrives" now: brokers refuse timestamps over an hour ahead.
        publisher.publish_framed(record.key, record.value, min(record.arrival_ms, now_ms))
    in_doubt = publisher.close(60)
    if in_doubt or publisher.failed:
        raise RuntimeError(f"publishing the sample: {publisher.failed} failed, {in_doubt} unacknowledged")
    return records


# --- the run --------------------------------------------------------------------------------------------------


def build_live_pipeline(
    settings: PipelineSettings, options: PipelineOptions, registry: SchemaRegistry, follow: bool
) -> beam.Pipeline:
    """The production graph: native Kafka IO at both edges, the real registry and stores; input offsets are
    committed from what the sinks wrote."""
    client = kafka_client(settings)
    source = ReadFromKafka(
        client,
        ReadConfig(
            topic=settings.kafka.input_topic,
            group_id=settings.kafka.consumer_group,
            stop_at_end=not follow,
            max_records_per_bundle=settings.kafka.read_max_records_per_bundle,
            max_bundle_seconds=settings.kafka.read_max_bundle_seconds,
            stall_seconds=settings.kafka.client_stall_seconds,
        ),
    )
    lookups = Lookups(
        PostgresUserLookup(EnvSecret(POSTGRES_DSN_ENV)),
        RedisProductLookup(settings.stores.redis_url),
    )
    pipeline = beam.Pipeline(options=options)
    built = build_pipeline(
        pipeline,
        settings,
        source,
        lambda name, topic: WriteToKafka(topic, client, stall_seconds=settings.kafka.client_stall_seconds),
        registry,
        lookups,
    )
    built.written | "CommitOffsets" >> CommitOffsets(client, settings.kafka.consumer_group)
    return pipeline


@dataclass
class LiveSummary:
    records_in: int
    seconds: float
    outputs: dict[str, int]
    dead_letter_codes: Counter
    enrichment: Counter
    late_panes: int
    too_late_for_windows: int
    reconciliation: Reconciliation

    def render(self) -> str:
        lines = [
            f"live run: {self.records_in} records in {self.seconds:.1f}s "
            f"({self.records_in / max(self.seconds, 1e-9):,.0f} records/s end to end)",
            "",
            "output               records",
        ]
        lines += [f"  {name:<19}{count:>7}" for name, count in self.outputs.items()]
        lines += ["", "dead letters by reason:"]
        lines += [f"  {code:<29}{n:>5}" for code, n in self.dead_letter_codes.most_common()]
        lines += [
            "",
            "enrichment of routed events: " + ", ".join(f"{k}={v}" for k, v in sorted(self.enrichment.items())),
            f"late panes (window metrics + sessions): {self.late_panes}",
            f"too late for the windows (dropped by the GroupByKey; from the final panes): {self.too_late_for_windows}",
            self.reconciliation.line(),
        ]
        return "\n".join(lines)


def _progress(
    settings: PipelineSettings, start: Offsets, end: Offsets | None, outputs_before: dict[str, Offsets]
) -> str:
    """The progress line (``end``: the input's end offsets now when None), or why it is unavailable.

    Best effort on purpose: the launcher hosts the LOOPBACK workers, so an exception here during a broker
    outage would end the job that is waiting the outage out.
    """
    try:
        end = end or end_offsets(settings, settings.kafka.input_topic)
        return _progress_counts(settings, start, end, outputs_before)
    except (KafkaException, RuntimeError) as err:
        return f"progress unavailable ({err})"


def _progress_counts(
    settings: PipelineSettings, start: Offsets, end: Offsets, outputs_before: dict[str, Offsets]
) -> str:
    topic = settings.kafka.input_topic
    committed = {**start, **committed_offsets(settings, topic, list(end))}
    done = sum(max(0, committed.get(p, 0) - start.get(p, 0)) for p in end)
    lag = sum(max(0, end_p - committed.get(p, 0)) for p, end_p in end.items())
    now = end_offsets_of(settings, [settings.topic(name) for name in outputs_before])
    produced = [
        f"{name}={sum(now[settings.topic(name)].values()) - sum(before.values())}"
        for name, before in outputs_before.items()
    ]
    return f"completely written {done} (lag {lag}) | produced " + " ".join(produced)


def _decoded(settings: PipelineSettings, registry: SchemaRegistry, name: str, start: Offsets) -> list[dict]:
    topic = settings.topic(name)
    serde = ConfluentAvroSerde(registry, schema_json(output_contract(name, settings).contract))
    return [serde.decode(m.value()) for m in read_range(settings, topic, start, end_offsets(settings, topic))]


def _input_records(
    settings: PipelineSettings, registry: SchemaRegistry, start: Offsets, end: Offsets
) -> list[InputRecord]:
    serde = ConfluentAvroSerde(registry, schema_json("clickstream_event"))
    records = []
    for message in read_range(settings, settings.kafka.input_topic, start, end):
        try:  # a tombstone (no value) is a record too: the pipeline dead-letters it
            event_id = serde.decode(message.value() or b"")["event_id"]
        except SerdeError:
            event_id = None
        records.append(InputRecord(message.partition(), message.offset(), event_id))
    return records


def _window_inputs(routed: dict[str, list[str]]) -> int:
    """Enriched records the windows received: each event once per copy, however many routes it took."""
    most: Counter = Counter()
    for ids in routed.values():
        for event_id, n in Counter(ids).items():
            most[event_id] = max(most[event_id], n)
    return sum(most.values())


def summarize(
    settings: PipelineSettings,
    registry: SchemaRegistry,
    input_start: Offsets,
    input_end: Offsets,
    outputs_before: dict[str, Offsets],
    seconds: float,
) -> LiveSummary:
    """Read every output written since ``outputs_before`` and reconcile it with the input range."""
    decoded = {name: _decoded(settings, registry, name, start) for name, start in outputs_before.items()}
    route_names = settings.route_names()
    routed = {name: [row["event"]["event_id"] for row in decoded[name]] for name in route_names}
    enrichment = {row["event"]["event_id"]: row["enrichment_status"] for name in route_names for row in decoded[name]}
    dead = decoded["dead_letters"]
    inputs = _input_records(settings, registry, input_start, input_end)
    reconciliation = reconcile(
        inputs,
        routed,
        [row["event_id"] for row in decoded["filtered"]],
        [(row["partition"], row["offset"]) for row in dead if row["topic"] == settings.kafka.input_topic],
    )
    # The last pane of a window holds every event it got: what the windows miss was dropped as too late.
    final_counts: dict[tuple, int] = {}
    for row in decoded["window_metrics"]:
        key = (row["window_start"], row["event_type"], row["category"], row["currency"])
        final_counts[key] = max(final_counts.get(key, 0), row["event_count"])
    late = sum(1 for name in ("window_metrics", "sessions") for row in decoded[name] if row["pane_timing"] == "LATE")
    return LiveSummary(
        records_in=len(inputs),
        seconds=seconds,
        outputs={name: len(rows) for name, rows in decoded.items()},
        dead_letter_codes=Counter(row["error_code"] for row in dead),
        enrichment=Counter(enrichment.values()),
        late_panes=late,
        too_late_for_windows=_window_inputs(routed) - sum(final_counts.values()),
        reconciliation=reconciliation,
    )


def run_live(
    settings: PipelineSettings,
    pipeline_args: list[str],
    generator: GeneratorConfig | None,
    follow: bool = False,
    duration_seconds: float | None = None,
    progress_seconds: float = 3.0,
    say: Callable[[str], None] = print,
) -> int:
    """Publish ``generator``'s sample (if any), run the pipeline, summarise; the exit code says if it reconciled."""
    export_worker_secrets(settings)
    registry = registry_for(settings)
    topic = settings.kafka.input_topic
    input_start = start_offsets(settings, topic)
    if generator is not None:
        records = publish_sample(settings, generator, registry)
        kinds = Counter(r.kind for r in records)
        say(f"published {len(records)} records to {topic}: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    input_end = end_offsets(settings, topic)
    output_ends = end_offsets_of(settings, [settings.topic(name) for name in settings.output_names()])
    outputs_before = {name: output_ends[settings.topic(name)] for name in settings.output_names()}
    say(
        f"reading {sum(input_end.values()) - sum(input_start.values())} records of {topic} "
        f"({'following' if follow else 'up to the end offsets at launch'}) on {pipeline_args[0]}"
    )
    pipeline = build_live_pipeline(settings, PipelineOptions(pipeline_args), registry, follow)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        result = pipeline.run()
        next_progress = started + progress_seconds
        while result.state not in ENDED_STATES:
            if stop.wait(0.5):
                say("stopping: cancelling the job (offsets of completely written records are committed)")
                result.cancel()
                break
            if duration_seconds is not None and time.monotonic() - started >= duration_seconds:
                say(f"DURATION={duration_seconds:g}s reached: cancelling the job")
                result.cancel()
                break
            if time.monotonic() >= next_progress:
                end = None if follow else input_end
                say(f"[{time.monotonic() - started:6.1f}s] " + _progress(settings, input_start, end, outputs_before))
                next_progress += progress_seconds
        try:
            state = result.wait_until_finish()
        except RuntimeError:  # the portable runner raises for CANCELLED too: only a cancel of ours is clean
            state = result.state
            if state != PipelineState.CANCELLED or not (stop.is_set() or duration_seconds is not None):
                raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    seconds = time.monotonic() - started
    say(f"pipeline {state} after {seconds:.1f}s")
    if state == PipelineState.FAILED:
        return 1
    # The final progress line, also for a job shorter than one progress interval.
    say(f"[{seconds:6.1f}s] " + _progress(settings, input_start, None if follow else input_end, outputs_before))
    if follow or duration_seconds is not None:
        say(beam_metrics.render(beam_metrics.read_beam_metrics(result)))
        return 0
    summary = summarize(settings, registry, input_start, input_end, outputs_before, seconds)
    say(summary.render())
    say(beam_metrics.render(beam_metrics.read_beam_metrics(result)))
    return 0 if summary.reconciliation.ok else 1
