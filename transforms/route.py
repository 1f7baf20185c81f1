"""Content-based routing: one multi-output ParDo sends each event to every route whose rule matches.

Routes are configuration (name + conditions), so adding an output is a settings change. An event
may match several routes; one that matches none goes to the default route, so nothing vanishes. Each
copy is one part of its input record's provenance: the offset is committed once every copy is written.
"""

import apache_beam as beam
from apache_beam import pvalue
from pydantic import BaseModel, ConfigDict, Field

from schemas.records import EnrichedEvent, Provenance, TrackedEnriched
from telemetry import metrics
from telemetry.endpoint import serve_worker_metrics
from transforms.outputs import multi_output_hints
from transforms.stage_metrics import counter

STAGE = "route"


class RouteRule(BaseModel):
    """A route and its conditions; all given conditions must hold, an unconditional rule matches everything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Route (and output) name.")
    event_types: frozenset[str] | None = Field(None, description="Match only these event types.")
    min_amount_minor: int | None = Field(None, ge=0, description="Match events with amount_minor >= this.")
    countries: frozenset[str] | None = Field(None, description="Match only these countries.")
    enrichment_statuses: frozenset[str] | None = Field(None, description="Match only these enrichment statuses.")

    def matches(self, enriched: EnrichedEvent) -> bool:
        event = enriched.event
        if self.event_types is not None and event.event_type not in self.event_types:
            return False
        if self.min_amount_minor is not None and (event.amount_minor or 0) < self.min_amount_minor:
            return False
        if self.countries is not None and event.country not in self.countries:
            return False
        return self.enrichment_statuses is None or enriched.enrichment_status in self.enrichment_statuses


class _RouteFn(beam.DoFn):
    def __init__(self, rules: tuple[RouteRule, ...], default_route: str, route_names: list[str]):
        self._rules = rules
        self._default = default_route
        self._route_names = route_names

    def setup(self):
        self._counters = {name: counter(STAGE, name) for name in self._route_names}
        self._routed = {name: metrics.ROUTED.labels(name) for name in self._route_names}
        serve_worker_metrics()

    def process(self, tracked: TrackedEnriched):
        routes = [rule.name for rule in self._rules if rule.matches(tracked.record)] or [self._default]
        for part, route in enumerate(routes):
            self._counters[route].inc()
            self._routed[route].inc()
            copy = tracked._replace(provenance=Provenance.split(tracked.provenance, part, len(routes)))
            yield pvalue.TaggedOutput(route, copy)


class RouteEvents(beam.PTransform[beam.PCollection[TrackedEnriched], dict[str, beam.PCollection[TrackedEnriched]]]):
    """Routes enriched events; returns ``{route name: PCollection[TrackedEnriched]}`` incl. the default route."""

    def __init__(self, rules: list[RouteRule] | tuple[RouteRule, ...], default_route: str):
        super().__init__()
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"route names must be unique, got {names}")
        if default_route in names:
            raise ValueError(f"default route {default_route!r} must not also be a rule")
        self._rules = tuple(rules)
        self._default = default_route

    def route_names(self) -> list[str]:
        """Every route's output, the default route last."""
        return [r.name for r in self._rules] + [self._default]

    def default_type_hints(self):
        return multi_output_hints(TrackedEnriched)

    def expand(self, events: beam.PCollection[TrackedEnriched]) -> dict[str, beam.PCollection]:
        names = self.route_names()
        results = events | "RouteByContent" >> beam.ParDo(
            _RouteFn(self._rules, self._default, names)
        ).with_output_types(TrackedEnriched, **dict.fromkeys(names, TrackedEnriched)).with_outputs(*names)
        return {name: results[name] for name in names}
