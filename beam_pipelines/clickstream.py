"""The clickstream pipeline: decode -> validate/filter -> enrich -> route | tumbling metrics | sessions.

``build_pipeline`` is a pure function of its inputs: the IO edges (a source of ``KafkaRecord`` and
a sink factory for ``OutputRecord``), the schema registry and the lookup handlers are injected, so
the graph between the edges is identical on the DirectRunner (in-memory edges) and on Flink
(KafkaIO edges). ``python -m beam_pipelines.clickstream --help`` lists every option.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows
from pydantic import BaseModel

from beam_pipelines.settings import DEFAULT_CONFIG, PipelineSettings, SettingsError, load_settings
from ingestion.generator import GeneratorConfig
from schemas.catalog import schema_json
from schemas.records import EnrichedEvent, SessionSummary, WindowMetric
from schemas.registry import SchemaRegistry
from schemas.serde import ConfluentAvroSerde
from transforms.decode import DecodeEvents
from transforms.encode import EncodeRecords
from transforms.enrich import EnrichEvents, LookupHandler
from transforms.route import RouteEvents
from transforms.sessions import UserSessions
from transforms.stage_metrics import counter
from transforms.validate import ValidateEvents
from transforms.windowed_metrics import WindowedMetrics

#: (output name, topic) -> a PTransform that writes PCollection[OutputRecord].
SinkFactory = Callable[[str, str], beam.PTransform]


class Lookups(NamedTuple):
    users: LookupHandler
    products: LookupHandler


class PipelineOutputs(NamedTuple):
    """What ``build_pipeline`` produced besides writing it: handles for audits and tests."""

    written: dict[str, beam.PCollection]  # output name -> PCollection[OutputRecord], already sunk
    filtered: beam.PCollection  # PCollection[ClickEvent] filtered on purpose (bots, test users)
    too_late_for_windows: beam.PCollection  # PCollection[EnrichedEvent] beyond the windows' allowed lateness
    too_late_for_sessions: beam.PCollection  # PCollection[EnrichedEvent] beyond the sessions' allowed lateness


def _event_key(enriched: EnrichedEvent) -> str:
    return enriched.event.user_id


def _window_key(metric: WindowMetric) -> str:
    return f"{metric.window_start}|{metric.event_type}|{metric.category}|{metric.currency}"


def _session_key(summary: SessionSummary) -> str:
    return summary.user_id


def _output_serde(registry: SchemaRegistry, contract: str, topic: str) -> ConfluentAvroSerde:
    """Registers the output schema at construction time: an incompatible schema fails the submission, not a worker."""
    serde = ConfluentAvroSerde(registry, schema_json(contract), subject=f"{topic}-value")
    serde.schema_id()
    return serde


class _CountDeadLetterLoss(beam.DoFn):
    """A dead letter that cannot itself be encoded has nowhere left to go: count it loudly."""

    def process(self, dead_letter: Any):
        counter("dead_letters", "unencodable").inc()


def build_pipeline(
    p: beam.Pipeline,
    settings: PipelineSettings,
    source: beam.PTransform,
    sink: SinkFactory,
    registry: SchemaRegistry,
    lookups: Lookups,
) -> PipelineOutputs:
    """Adds the whole graph to ``p``, writes every output through ``sink`` and returns handles to them."""
    records = p | "ReadInput" >> source
    decoded = records | "Decode" >> DecodeEvents(ConfluentAvroSerde(registry, schema_json("clickstream_event")))
    validated = decoded.events | "Validate" >> ValidateEvents(settings.validation)
    enriched = validated.valid | "Enrich" >> EnrichEvents(settings.enrichment, lookups.users, lookups.products)

    typed_outputs: dict[str, tuple[beam.PCollection, str, Callable[[Any], str]]] = {}
    routes = enriched | "Route" >> RouteEvents(settings.routes, settings.default_route)
    for name, events in routes.items():
        typed_outputs[name] = (events, "enriched_event", _event_key)
    metrics = enriched | "WindowMetrics" >> WindowedMetrics(settings.windows)
    typed_outputs["window_metrics"] = (metrics.metrics, "window_metric", _window_key)
    sessions = enriched | "Sessions" >> UserSessions(settings.sessions)
    typed_outputs["sessions"] = (sessions.sessions, "session_summary", _session_key)

    outputs: dict[str, beam.PCollection] = {}
    dead_letters = [decoded.dead_letters, validated.dead_letters]
    for name, (pcoll, contract, key_fn) in typed_outputs.items():
        topic = settings.topic(name)
        encoded = pcoll | f"Encode[{name}]" >> EncodeRecords(_output_serde(registry, contract, topic), key_fn, name)
        dead_letters.append(encoded.dead_letters)
        outputs[name] = encoded.records

    dlq_topic = settings.topic("dead_letters")
    # Dead letters of windowed outputs carry their windows; the dead-letter stream is not windowed.
    all_dead = [
        pcoll | f"Unwindow{i}" >> beam.WindowInto(GlobalWindows()) for i, pcoll in enumerate(dead_letters)
    ] | "CollectDeadLetters" >> beam.Flatten()
    encoded_dlq = all_dead | "Encode[dead_letters]" >> EncodeRecords(
        _output_serde(registry, "dead_letter", dlq_topic), lambda d: d.stage, "dead_letters"
    )
    encoded_dlq.dead_letters | "CountUnencodableDeadLetters" >> beam.ParDo(_CountDeadLetterLoss())
    outputs["dead_letters"] = encoded_dlq.records

    for name, pcoll in outputs.items():
        pcoll | f"Write[{name}]" >> sink(name, settings.topic(name))
    return PipelineOutputs(outputs, validated.filtered, metrics.too_late, sessions.too_late)


def _settings_help(model: type, prefix: str = "") -> list[str]:
    """One line per settings path with its default and description, for ``--help``."""
    lines = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines += _settings_help(annotation, f"{path}.")
            continue
        default = "" if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, (dict, tuple)) and len(str(default)) > 60:
            default = "(see beam_pipelines/config/clickstream.yaml)"
        lines.append(f"  {path:<44} {info.description or ''} [default: {default}]")
    return lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m beam_pipelines.clickstream",
        description=(
            "Run the clickstream pipeline. Settings come from --config (YAML) with --set overrides; "
            "any other --flag is passed to Beam as a pipeline option."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings paths for --set (path=value, value parsed as YAML):\n"
        + "\n".join(_settings_help(PipelineSettings)),
    )
    parser.add_argument("--config", type=Path, help=f"settings YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help="override one setting"
    )
    parser.add_argument(
        "--profile",
        choices=["direct"],
        default="direct",
        help="direct: DirectRunner over a generated sample replayed in event time (in-memory registry and stores)",
    )
    parser.add_argument("--sample-events", type=int, default=3000, help="records in the generated sample")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (same seed, same sample)")
    parser.add_argument(
        "--output-dir", type=Path, default=Path(".stack/direct-run"), help="where the direct profile writes outputs"
    )
    return parser


def run(argv: Optional[list[str]] = None) -> int:
    """Parse and validate settings, run the chosen profile, print its summary; the exit code says if it reconciled."""
    args, beam_args = _parser().parse_known_args(argv)
    try:
        settings = load_settings(args.config, tuple(args.overrides))
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from runners.direct import run_sample

    summary = run_sample(
        settings, GeneratorConfig(seed=args.seed, events=args.sample_events), args.output_dir, beam_args
    )
    print(summary.render())
    return 0 if summary.reconciles else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run())
