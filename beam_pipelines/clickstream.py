"""The clickstream pipeline: decode -> validate/filter -> enrich -> route | tumbling metrics | sessions.

``build_pipeline`` is a pure function of its inputs: the IO edges (a source of ``KafkaRecord`` and a
sink factory for ``OutputRecord``), the schema registry and the lookup handlers are injected, so the
graph between the edges is identical on every runner: Kafka edges on Prism and Flink, in-memory
edges in unit tests. ``OUTPUT_CONTRACTS`` is the one table of what each output carries.
"""

from typing import Any, Callable, NamedTuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from beam_pipelines.settings import PipelineSettings
from schemas.catalog import schema_json
from schemas.records import DeadLetter
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


class OutputContract(NamedTuple):
    contract: str  # Avro contract in schemas/avro
    key: Callable[[Any], str]  # Kafka key: per-user order for events and sessions, the window for metrics


ROUTED_EVENTS = OutputContract("enriched_event", lambda e: e.event.user_id)
#: Outputs other than routes (every route carries ROUTED_EVENTS).
OUTPUT_CONTRACTS: dict[str, OutputContract] = {
    "window_metrics": OutputContract(
        "window_metric", lambda m: f"{m.window_start}|{m.event_type}|{m.category}|{m.currency}"
    ),
    "sessions": OutputContract("session_summary", lambda s: s.user_id),
    "filtered": OutputContract("clickstream_event", lambda e: e.user_id),
    # Spread over partitions by source record (or reason, for records without a source).
    "dead_letters": OutputContract(
        "dead_letter", lambda d: f"{d.topic}:{d.partition}:{d.offset}" if d.offset is not None else d.error_code
    ),
}


def output_contract(name: str) -> OutputContract:
    """What output ``name`` carries: a fixed output's contract, else a route's."""
    return OUTPUT_CONTRACTS.get(name, ROUTED_EVENTS)


class Lookups(NamedTuple):
    users: LookupHandler
    products: LookupHandler


def _output_serde(registry: SchemaRegistry, contract: str, topic: str) -> ConfluentAvroSerde:
    """Registers the output schema at construction time: an incompatible schema fails the submission, not a worker."""
    serde = ConfluentAvroSerde(registry, schema_json(contract), subject=f"{topic}-value")
    serde.schema_id()
    return serde


class _CountDeadLetterLoss(beam.DoFn):
    """A dead letter that cannot itself be encoded has nowhere left to go: count it loudly."""

    def process(self, dead_letter: DeadLetter):
        counter("dead_letters", "unencodable").inc()


def build_pipeline(
    p: beam.Pipeline,
    settings: PipelineSettings,
    source: beam.PTransform,
    sink: SinkFactory,
    registry: SchemaRegistry,
    lookups: Lookups,
) -> dict[str, beam.PCollection]:
    """Adds the whole graph to ``p``, writes every output through ``sink``; returns output name -> records written."""
    records = p | "ReadInput" >> source
    decoded = records | "Decode" >> DecodeEvents(ConfluentAvroSerde(registry, schema_json("clickstream_event")))
    validated = decoded.events | "Validate" >> ValidateEvents(settings.validation)
    enriched = validated.valid | "Enrich" >> EnrichEvents(settings.enrichment, lookups.users, lookups.products)

    typed_outputs: dict[str, beam.PCollection] = dict(
        enriched | "Route" >> RouteEvents(settings.routes, settings.default_route)
    )
    typed_outputs["window_metrics"] = enriched | "WindowMetrics" >> WindowedMetrics(settings.windows)
    typed_outputs["sessions"] = enriched | "Sessions" >> UserSessions(settings.sessions)
    typed_outputs["filtered"] = validated.filtered

    outputs: dict[str, beam.PCollection] = {}
    dead_letters = [decoded.dead_letters, validated.dead_letters]
    for name, pcoll in typed_outputs.items():
        contract = output_contract(name)
        serde = _output_serde(registry, contract.contract, settings.topic(name))
        encoded = pcoll | f"Encode[{name}]" >> EncodeRecords(serde, contract.key, name)
        dead_letters.append(encoded.dead_letters)
        outputs[name] = encoded.records

    # Dead letters of windowed outputs carry their windows; the dead-letter stream is not windowed.
    all_dead = [
        pcoll | f"Unwindow{i}" >> beam.WindowInto(GlobalWindows()) for i, pcoll in enumerate(dead_letters)
    ] | "CollectDeadLetters" >> beam.Flatten()
    dlq = output_contract("dead_letters")
    encoded_dlq = all_dead | "Encode[dead_letters]" >> EncodeRecords(
        _output_serde(registry, dlq.contract, settings.topic("dead_letters")), dlq.key, "dead_letters"
    )
    encoded_dlq.dead_letters | "CountUnencodableDeadLetters" >> beam.ParDo(_CountDeadLetterLoss())
    outputs["dead_letters"] = encoded_dlq.records

    for name, pcoll in outputs.items():
        pcoll | f"Write[{name}]" >> sink(name, settings.topic(name))
    return outputs


