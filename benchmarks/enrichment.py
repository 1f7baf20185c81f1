"""``python -m benchmarks.enrichment``: the project's ``EnrichEvents`` against Beam's ``Enrichment`` transform,
on Prism, against the local stack's PostgreSQL (users) and Redis (products). Needs ``make up``.

Both join the same generated events with the same stores and produce the same ``EnrichedEvent``s; Beam's
side uses one ``EnrichmentSourceHandler`` per store (chained ``Enrichment`` steps, synchronous psycopg and
redis clients). Cases: healthy stores, and the user store unreachable (a wrong port), where a pipeline
must degrade the events instead of failing (Beam's worker logs the failing job's traceback: expected).
Prints one table, ratios against ``EnrichEvents``.
"""

import argparse
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
import psycopg
import redis
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.enrichment import Enrichment, EnrichmentSourceHandler
from pydantic import SecretStr

from ingestion.generator import GeneratorConfig, product_id, user_id
from runners.profiles import RunnerSettings, pipeline_args
from runners.stack.postgres import postgres_dsn
from runners.stack.process import port_open
from runners.stack.redis import redis_url
from runners.stack.settings import StackSettings
from schemas.records import ClickEvent, EnrichedEvent, Product, TrackedEnriched, TrackedEvent, UserProfile
from transforms.enrich import EnrichEvents, EnrichmentConfig, LookupHandler, enrichment_status
from transforms.lookups import PostgresUserLookup, RedisProductLookup, product_from_hash, product_key, user_query

NAMESPACE = "bench"


def _events(n: int, config: GeneratorConfig) -> list[TrackedEvent]:
    """Events over the generator's users and products (some without a profile or catalogue entry)."""
    events = []
    for i in range(n):
        with_product = i % 3 != 0
        event = ClickEvent(
            event_id=f"bench-{i}",
            event_type="product_view" if with_product else "page_view",
            user_id=user_id(i * 7 % config.users),
            session_hint=None,
            product_id=product_id(i * 13 % config.products) if with_product else None,
            amount_minor=None,
            currency=None,
            event_time=1_717_236_000_000 + i,
            device="web",
            country="DE",
            user_agent=None,
            referrer=None,
            properties={},
        )
        events.append(TrackedEvent(event, None))
    return events


class _PostgresUsers(EnrichmentSourceHandler):
    """Beam-side user handler: one blocking SELECT per request."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    def __enter__(self) -> None:
        self._conn = psycopg.connect(self._dsn, connect_timeout=5, autocommit=True)

    def __call__(self, request: TrackedEvent, *args: Any, **kwargs: Any) -> tuple[TrackedEvent, UserProfile | None]:
        row = self._conn.execute(user_query(), (request.record.user_id,)).fetchone()
        return request, UserProfile(*row) if row else None

    def __exit__(self, *exc: Any) -> None:
        self._conn.close()


class _RedisProducts(EnrichmentSourceHandler):
    """Beam-side product handler: one blocking HGETALL per request with a product."""

    def __init__(self, url: str) -> None:
        self._url = url

    def __enter__(self) -> None:
        self._client = redis.Redis.from_url(self._url, decode_responses=True, socket_timeout=5)

    def __call__(self, request: tuple[TrackedEvent, UserProfile | None], *args: Any, **kwargs: Any) -> Any:
        event = request[0].record
        if not event.product_id:
            return request, None
        key = product_key(event.product_id)
        fields = self._client.hgetall(key)
        return request, product_from_hash(event.product_id, fields, key) if fields else None

    def __exit__(self, *exc: Any) -> None:
        self._client.close()


def _joined(request: tuple[TrackedEvent, UserProfile | None], product: Product | None) -> TrackedEnriched:
    tracked, user = request
    status = enrichment_status(1 + bool(tracked.record.product_id), (user is not None) + (product is not None))
    return TrackedEnriched(EnrichedEvent(tracked.record, user, product, status, []), tracked.provenance)


class BeamEnrichment(beam.PTransform):
    def __init__(self, dsn: str, url: str) -> None:
        super().__init__()
        self._dsn, self._url = dsn, url

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return (
            events
            | "Users" >> Enrichment(_PostgresUsers(self._dsn), join_fn=lambda e, u: (e, u), use_custom_types=True)
            | "Products" >> Enrichment(_RedisProducts(self._url), join_fn=_joined, use_custom_types=True)
        )


class _Count(beam.DoFn):
    def process(self, tracked: TrackedEnriched) -> None:
        beam.metrics.Metrics.counter(NAMESPACE, tracked.record.enrichment_status).inc()


def _run(name: str, enrich: beam.PTransform, events: list[TrackedEvent], args: list[str]) -> dict[str, Any]:
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    _ = pipeline | beam.Create(events) | name >> enrich | beam.ParDo(_Count())
    started = time.monotonic()
    result = pipeline.run()
    try:
        state = result.wait_until_finish()
    except RuntimeError as err:  # the portable runner raises for a failed job: name the worker's exception
        causes = re.findall(r"^(\w+(?:\.\w+)*(?:Error|Exception): .*)$", str(err), re.M)
        state, error = PipelineState.FAILED, (causes[-1] if causes else str(err).splitlines()[0])[:90]
    else:
        error = ""
    seconds = time.monotonic() - started
    counts = {}
    if state == PipelineState.DONE:
        for counter in result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))["counters"]:
            counts[counter.key.metric.name] = counter.committed
    return {"state": state, "seconds": seconds, "counts": counts, "error": error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.enrichment", description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    args = parser.parse_args(argv)
    stack = StackSettings.from_env()
    needed = (("PostgreSQL", stack.postgres_port), ("Redis", stack.redis_port), ("Prism", stack.prism_port))
    for what, port in needed:
        if not port_open(stack.host, port):
            print(f"error: {what} is not running on {stack.host}:{port}; start it with `make up`", file=sys.stderr)
            return 2
    runner = pipeline_args(RunnerSettings(runner="prism", prism_job_endpoint=f"{stack.host}:{stack.prism_port}"))
    events = _events(args.events, GeneratorConfig())
    dsn, url = postgres_dsn(stack), redis_url(stack)
    broken_dsn = dsn.replace(f":{stack.postgres_port}/", ":1/")  # nothing listens on port 1
    config = EnrichmentConfig()

    def ours(users_dsn: str) -> Callable[[], beam.PTransform]:
        users: LookupHandler = PostgresUserLookup(SecretStr(users_dsn))
        return lambda: EnrichEvents(config, users, RedisProductLookup(url))

    cases = [
        ("healthy stores", ours(dsn), lambda: BeamEnrichment(dsn, url)),
        ("user store down", ours(broken_dsn), lambda: BeamEnrichment(broken_dsn, url)),
    ]
    print(f"{args.events} events on Prism (LOOPBACK, 2 cores), PostgreSQL users + Redis products\n")
    print(f"{'case':<17}{'transform':<22}{'job':>8}{'events/s':>10}{'ratio':>7}  outcome")
    for case, make_ours, make_beam in cases:
        baseline = None
        for label, make in (("EnrichEvents", make_ours), ("Beam Enrichment", make_beam)):
            run = _run(label.replace(" ", ""), make(), events, runner)
            rate = args.events / run["seconds"] if run["state"] == PipelineState.DONE else 0.0
            baseline = baseline or rate
            ratio = f"{rate / baseline:.2f}x" if baseline else "-"
            outcome = (
                ", ".join(f"{k}={v}" for k, v in sorted(run["counts"].items()))
                if run["state"] == PipelineState.DONE
                else f"{run['state']}: {run['error']}"
            )
            print(f"{case:<17}{label:<22}{run['seconds']:>7.1f}s{rate:>10,.0f}{ratio:>7}  {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
