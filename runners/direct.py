"""The DirectRunner profile: a generated sample replayed in event time, outputs to JSON-lines files.

The sample is fed through a ``TestStream`` in arrival order with a log-append-time watermark, the
way KafkaIO would see it, so late and too-late events behave as they will on Flink. It runs on
``BundleBasedDirectRunner`` by name: the default DirectRunner would try to download the Prism
runner from the internet. Processing time starts at the real clock because the async enrichment
commits its results from wall-clock timers.
"""

import base64
import dataclasses
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from beam_pipelines.clickstream import Lookups, build_pipeline
from beam_pipelines.settings import PipelineSettings
from ingestion.generator import GeneratedRecord, GeneratorConfig, generate, reference_data
from schemas.catalog import schema_json
from schemas.records import KafkaRecord, OutputRecord
from schemas.registry import InMemoryRegistry, SchemaRegistry
from schemas.serde import ConfluentAvroSerde
from transforms.enrich import InMemoryLookupHandler

DIRECT_RUNNER_ARGS = ["--runner=BundleBasedDirectRunner", "--streaming"]
_CONTRACTS = {"window_metrics": "window_metric", "sessions": "session_summary", "dead_letters": "dead_letter"}


def replay_stream(records: list[GeneratedRecord], topic: str, batch_ms: int = 30_000) -> TestStream:
    """``records`` (sorted by arrival) as a TestStream: one batch per ``batch_ms`` of arrival time."""
    stream = TestStream(coder=beam.coders.registry.get_coder(KafkaRecord))
    stream.advance_processing_time(int(time.time()) + 30)
    batch: list[TimestampedValue] = []
    batch_end = None
    for offset, rec in enumerate(records):
        if batch_end is not None and rec.arrival_ms >= batch_end:
            stream.add_elements(batch).advance_watermark_to(batch_end / 1000).advance_processing_time(1)
            batch = []
        if not batch:
            batch_end = (rec.arrival_ms // batch_ms + 1) * batch_ms
        kafka = KafkaRecord(rec.key, rec.value, topic, 0, offset, rec.arrival_ms)
        batch.append(TimestampedValue(kafka, rec.arrival_ms / 1000))
    if batch:
        stream.add_elements(batch)
    for _ in range(5):
        stream.advance_processing_time(1)
    return stream.advance_watermark_to_infinity().advance_processing_time(5)


class _AppendJsonLines(beam.DoFn):
    """Test/demo sink: one JSON line per record (base64 key/value), one file per DoFn instance."""

    def __init__(self, path_prefix: str):
        self._prefix = path_prefix

    def setup(self):
        self._file = open(f"{self._prefix}-{uuid.uuid4().hex}.jsonl", "a")  # noqa: SIM115  closed in teardown

    def process(self, record: OutputRecord | str):
        if isinstance(record, str):
            line = {"id": record}
        else:
            key = base64.b64encode(record.key).decode() if record.key is not None else None
            line = {"key": key, "value": base64.b64encode(record.value).decode()}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def teardown(self):
        self._file.close()


def file_sink(directory: Path):
    def factory(name: str, topic: str) -> beam.PTransform:
        return beam.ParDo(_AppendJsonLines(str(directory / name)))

    return factory


def _count_lines(directory: Path, name: str) -> int:
    return sum(len(path.read_text().splitlines()) for path in directory.glob(f"{name}-*.jsonl"))


def read_output(directory: Path, name: str, registry: SchemaRegistry) -> list[dict]:
    """Decode every record a file sink wrote for ``name`` (proves the bytes are valid Confluent Avro)."""
    serde = ConfluentAvroSerde(registry, schema_json(_CONTRACTS.get(name, "enriched_event")))
    rows = []
    for path in sorted(directory.glob(f"{name}-*.jsonl")):
        for line in path.read_text().splitlines():
            rows.append(serde.decode(base64.b64decode(json.loads(line)["value"])))
    return rows


@dataclass
class DirectRunSummary:
    records_in: int
    outputs: dict[str, int]
    dead_letter_codes: Counter
    filtered: int
    routed_events: int
    enrichment: Counter
    kinds: Counter
    seconds: float
    late_panes: int = 0
    too_late: int = 0
    reconciles: bool = field(init=False)

    def __post_init__(self):
        dead = sum(self.dead_letter_codes.values())
        self.reconciles = self.records_in == self.routed_events + dead + self.filtered

    def render(self) -> str:
        lines = [
            f"DirectRunner run: {self.records_in} records in {self.seconds:.1f}s",
            "",
            "output               records",
        ]
        lines += [f"  {name:<19}{count:>7}" for name, count in self.outputs.items()]
        lines += ["", "dead letters by reason:"]
        lines += [f"  {code:<29}{n:>5}" for code, n in self.dead_letter_codes.most_common()]
        dead = sum(self.dead_letter_codes.values())
        lines += [
            "",
            "enrichment of routed events: " + ", ".join(f"{k}={v}" for k, v in sorted(self.enrichment.items())),
            f"late panes (window metrics + sessions): {self.late_panes}",
            f"too late for windows/sessions (counted, still routed): {self.too_late}",
            f"reconciliation: in {self.records_in} = routed {self.routed_events} + dead-lettered {dead}"
            f" + filtered {self.filtered}  -> {'OK' if self.reconciles else 'MISMATCH'}",
            "generated mix: " + ", ".join(f"{k}={v}" for k, v in sorted(self.kinds.items())),
        ]
        return "\n".join(lines)


def run_sample(
    settings: PipelineSettings, generator: GeneratorConfig, output_dir: Path, beam_args: list[str]
) -> DirectRunSummary:
    """Generate a sample anchored at the current time, run the pipeline over it, summarise the outputs."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for old in output_dir.glob("*.jsonl"):
        old.unlink()
    now_ms = int(time.time() * 1000)
    generator = dataclasses.replace(generator, start_ms=now_ms - generator.duration_seconds * 1000 - 1_800_000)
    registry = InMemoryRegistry()
    records = generate(generator, registry, now_ms=now_ms)
    users, products = reference_data(generator)
    lookups = Lookups(InMemoryLookupHandler("user", users), InMemoryLookupHandler("product", products))
    started = time.monotonic()
    options = PipelineOptions(DIRECT_RUNNER_ARGS + beam_args)
    pipeline = beam.Pipeline(options=options)
    source = replay_stream(records, settings.kafka.input_topic)
    outputs = build_pipeline(pipeline, settings, source, file_sink(output_dir), registry, lookups)
    # Audit trails as files: BundleBasedDirectRunner's streaming metrics are incomplete, files are not.
    audits = {
        "filtered": outputs.filtered | "AuditFiltered" >> beam.Map(lambda e: e.event_id),
        "too_late_windows": outputs.too_late_for_windows | "AuditTooLateW" >> beam.Map(lambda e: e.event.event_id),
        "too_late_sessions": outputs.too_late_for_sessions | "AuditTooLateS" >> beam.Map(lambda e: e.event.event_id),
    }
    for name, ids in audits.items():
        ids | f"Write[{name}]" >> beam.ParDo(_AppendJsonLines(str(output_dir / name)))
    pipeline.run().wait_until_finish()
    seconds = time.monotonic() - started

    decoded = {name: read_output(output_dir, name, registry) for name in settings.output_names()}
    route_names = [r.name for r in settings.routes] + [settings.default_route]
    routed = {row["event"]["event_id"]: row["enrichment_status"] for name in route_names for row in decoded[name]}
    audit = {name: _count_lines(output_dir, name) for name in audits}
    late = sum(1 for name in ("window_metrics", "sessions") for row in decoded[name] if row["pane_timing"] == "LATE")
    return DirectRunSummary(
        records_in=len(records),
        outputs={name: len(rows) for name, rows in decoded.items()},
        dead_letter_codes=Counter(row["error_code"] for row in decoded["dead_letters"]),
        filtered=audit["filtered"],
        routed_events=len(routed),
        enrichment=Counter(routed.values()),
        kinds=Counter(r.kind for r in records),
        seconds=seconds,
        late_panes=late,
        too_late=audit["too_late_windows"] + audit["too_late_sessions"],
    )
