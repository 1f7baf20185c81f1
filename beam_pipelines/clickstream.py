"""The clickstream pipeline: decode -> validate/filter -> dedupe -> enrich -> route | tumbling metrics | sessions.

``build_pipeline`` is a pure function of its inputs: the IO edges (a source of ``KafkaRecord`` and a
sink factory for ``OutputRecord``), the schema registry and the lookup handlers are injected, so the
graph between the edges is identical on every runner: Kafka edges on Prism and Flink, in-memory
edges in unit tests. ``OUTPUT_CONTRACTS`` is the one table of what each output carries.

Every input record ends in per-record outputs (routes, filtered, dead letters) whose records carry its
``Provenance``; the sinks hand back the provenance of what they wrote, and the caller commits input
offsets from those (``kafkaio.commit.CommitOffsets``), so an offset is committed only once its record
is completely written.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from beam_pipelines.settings import PipelineSettings
from schemas import endpoints
from schemas.catalog import schema_json
from schemas.records import EnrichedEvent, Provenance, TrackedDeadLetter
from schemas.registry import SchemaRegistry
from schemas.serde import ConfluentAvroSerde
from transforms.decode import DecodeEvents
from transforms.dedupe import DropDuplicateEvents
from transforms.encode import EncodeRecords
from transforms.enrich import EnrichEvents, LookupHandler
from transforms.infra_retry import InfraRetryConfig
from transforms.route import RouteEvents
from transforms.sessions import UserSessions
from transforms.stage_metrics import counter
from transforms.validate import ValidateEvents
from transforms.windowed_metrics import WindowedMetrics

#: (output name, topic) -> a PTransform that writes PCollection[OutputRecord] and returns the provenance
#: of each record once it is durably written (``kafkaio.WriteToKafka``).
SinkFactory = Callable[[str, str], beam.PTransform]


class OutputContract(NamedTuple):
    contract: str  # Avro contract in schemas/avro
    key: Callable[[Any], str]  # Kafka key: per-user order for events and sessions, the window for metrics
    aggregate: bool = False  # made from many input records (so its records complete none of them)


ROUTED_EVENTS = OutputContract("enriched_event", lambda e: e.event.user_id)
#: Outputs other than routes (every route carries ROUTED_EVENTS).
OUTPUT_CONTRACTS: dict[str, OutputContract] = {
    "window_metrics": OutputContract(
        "window_metric", lambda m: f"{m.window_start}|{m.event_type}|{m.category}|{m.currency}", aggregate=True
    ),
    "sessions": OutputContract("session_summary", lambda s: s.user_id, aggregate=True),
    "filtered": OutputContract("clickstream_event", lambda e: e.user_id),
    # Spread over partitions by source record (or reason, for records without a source).
    "dead_letters": OutputContract(
        "dead_letter", lambda d: f"{d.topic}:{d.partition}:{d.offset}" if d.offset is not None else d.error_code
    ),
}


def output_contract(name: str, settings: PipelineSettings) -> OutputContract:
    """What output ``name`` carries: a fixed output's contract, or a route's; an unknown name is an error."""
    if name in OUTPUT_CONTRACTS:
        return OUTPUT_CONTRACTS[name]
    if name in settings.route_names():
        return ROUTED_EVENTS
    raise KeyError(f"no output {name!r}; outputs: {settings.output_names()}")


class Lookups(NamedTuple):
    users: LookupHandler
    products: LookupHandler


def _output_serde(registry: SchemaRegistry, contract: str, topic: str) -> ConfluentAvroSerde:
    """Registers the output schema at construction time: an incompatible schema fails the submission, not a worker."""
    serde = ConfluentAvroSerde(registry, schema_json(contract), subject=endpoints.value_subject(topic))
    serde.schema_id()
    return serde


class _CountDeadLetterLoss(beam.DoFn):
    """A dead letter that cannot itself be encoded has nowhere left to go: count it loudly, and let its
    record's offset be committed (reading it again would fail the same way)."""

    def process(self, dead_letter: TrackedDeadLetter):
        counter("dead_letters", "unencodable").inc()
        if dead_letter.provenance is not None:
            yield dead_letter.provenance


class _Write(NamedTuple):
    output: str  # the output (its topic)
    label: str  # the write step's name
    records: beam.PCollection  # PCollection[OutputRecord]
    of_aggregates: bool  # its records complete no input record, so the offset committer does not wait for them


class BuiltPipeline(NamedTuple):
    outputs: dict[str, beam.PCollection]  # output name -> PCollection[OutputRecord] handed to the sink
    written: beam.PCollection  # PCollection[Provenance]: a part of an input record durably written


def _encoded_dead_letters(
    label: str, parts: list[beam.PCollection], serde: ConfluentAvroSerde, retry: InfraRetryConfig
) -> tuple[beam.PCollection, beam.PCollection]:
    """One dead-letter stream from ``parts``: (encoded records, provenance of dead letters that could not be)."""
    # Dead letters of windowed outputs carry their windows; the dead-letter stream is not windowed.
    collected = [
        pcoll | f"Unwindow[{label}/{i}]" >> beam.WindowInto(GlobalWindows()) for i, pcoll in enumerate(parts)
    ] | f"Collect[{label}]" >> beam.Flatten()
    encoded = collected | f"Encode[{label}]" >> EncodeRecords(
        serde, OUTPUT_CONTRACTS["dead_letters"].key, "dead_letters", retry
    )
    lost = encoded.dead_letters | f"CountUnencodable[{label}]" >> beam.ParDo(_CountDeadLetterLoss()).with_output_types(
        Provenance
    )
    return encoded.records, lost


def build_pipeline(
    p: beam.Pipeline,
    settings: PipelineSettings,
    source: beam.PTransform,
    sink: SinkFactory,
    registry: SchemaRegistry,
    lookups: Lookups,
) -> BuiltPipeline:
    """Adds the whole graph to ``p`` and writes every output through ``sink``."""
    records = p | "ReadInput" >> source
    decoded = records | "Decode" >> DecodeEvents(
        ConfluentAvroSerde(registry, schema_json("clickstream_event")), settings.decode, settings.infrastructure
    )
    validated = decoded.events | "Validate" >> ValidateEvents(settings.validation)
    unique = validated.valid | "Dedupe" >> DropDuplicateEvents(settings.dedupe)
    enriched = unique.unique | "Enrich" >> EnrichEvents(settings.enrichment, lookups.users, lookups.products)

    typed_outputs: dict[str, beam.PCollection] = dict(
        enriched | "Route" >> RouteEvents(settings.routes, settings.default_route)
    )
    events = enriched | "Untrack" >> beam.Map(lambda tracked: tracked.record).with_output_types(EnrichedEvent)
    typed_outputs["window_metrics"] = events | "WindowMetrics" >> WindowedMetrics(settings.windows)
    typed_outputs["sessions"] = events | "Sessions" >> UserSessions(settings.sessions)
    typed_outputs["filtered"] = validated.filtered

    writes: list[_Write] = []
    dead_letters: dict[bool, list[beam.PCollection]] = {
        False: [decoded.dead_letters, validated.dead_letters, unique.dead_letters],
        True: [],
    }
    for name, pcoll in typed_outputs.items():
        contract = output_contract(name, settings)
        serde = _output_serde(registry, contract.contract, settings.topic(name))
        encoded = pcoll | f"Encode[{name}]" >> EncodeRecords(serde, contract.key, name, settings.infrastructure)
        dead_letters[contract.aggregate].append(encoded.dead_letters)
        writes.append(_Write(name, name, encoded.records, contract.aggregate))

    # Dead letters of input records and of aggregates are written apart: a write downstream of the windows
    # moves on only with their (held back) watermark, and committing input offsets must not wait for that.
    dlq_serde = _output_serde(registry, OUTPUT_CONTRACTS["dead_letters"].contract, settings.topic("dead_letters"))
    written = []
    for of_aggregates, parts in dead_letters.items():
        label = f"dead_letters/{'aggregates' if of_aggregates else 'records'}"
        records, lost = _encoded_dead_letters(label, parts, dlq_serde, settings.infrastructure)
        if not of_aggregates:
            written.append(lost)
        writes.append(_Write("dead_letters", label, records, of_aggregates))

    for write in writes:
        acknowledged = write.records | f"Write[{write.label}]" >> sink(write.output, settings.topic(write.output))
        if not write.of_aggregates:
            written.append(acknowledged | f"Written[{write.label}]" >> beam.WindowInto(GlobalWindows()))
    outputs: dict[str, Any] = {}
    for write in writes:
        outputs.setdefault(write.output, []).append(write.records)
    return BuiltPipeline(
        {
            name: parts[0] if len(parts) == 1 else parts | f"All[{name}]" >> beam.Flatten()
            for name, parts in outputs.items()
        },
        written | "AllWritten" >> beam.Flatten(),
    )
