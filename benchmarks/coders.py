"""Size and speed of the coders a pipeline element can end up with.

Why the records are registered with ``RowCoder``: without it, Beam falls back to
``FastPrimitivesCoder``, which pickles anything it does not know, so every shuffle and every
element kept in Flink state would carry a pickle. The Confluent Avro wire format (with the
NamedTuple <-> dict conversion) is shown as the reference the edges pay anyway.

Run: ``python -m benchmarks.coders [--n N] [--repeats R]``. The numbers are per element, for one
encode plus one decode in the outer context (``coder.encode``/``coder.decode``), best of R timed
passes after one warm-up pass over the same elements.
"""

import argparse
import platform
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import coder_impl

from schemas import catalog
from schemas.records import ClickEvent, EnrichedEvent, Product, UserProfile, from_avro, to_avro
from schemas.registry import InMemoryRegistry
from schemas.serde import ConfluentAvroSerde

_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/125.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/604.1",
)
_EVENT_TYPES = ("page_view", "product_view", "search", "add_to_cart", "checkout", "purchase")
_EVENT_WEIGHTS = (50, 25, 10, 8, 4, 3)
_DEVICES = ("desktop", "mobile", "tablet", "other")
_COUNTRIES = ("DE", "FR", "NL", "US", "GB", "PL", "ES")
_CURRENCY = {"DE": "EUR", "FR": "EUR", "NL": "EUR", "ES": "EUR", "US": "USD", "GB": "GBP", "PL": "PLN"}
_CATEGORIES = ("shoes", "jackets", "bags", "accessories", "electronics")
_REFERRERS = ("https://www.google.com/", "https://news.example.com/deals", "android-app://com.example.app/")


def click_events(count: int, seed: int = 42) -> list[ClickEvent]:
    """Distinct, realistic raw events: UUID ids, real user agents, 2-4 properties, amounts on commerce events."""
    rng = random.Random(seed)
    events = []
    for i in range(count):
        event_type = rng.choices(_EVENT_TYPES, _EVENT_WEIGHTS)[0]
        country = rng.choice(_COUNTRIES)
        has_product = event_type not in ("page_view", "search")
        has_amount = event_type in ("add_to_cart", "checkout", "purchase")
        properties = {"page": f"/p/sku-{rng.randrange(10_000):05d}" if has_product else "/", "ab_bucket": "AB"[i % 2]}
        if rng.random() < 0.5:
            properties["campaign"] = rng.choice(("spring-sale", "newsletter-0424", "retargeting"))
        if event_type == "search":
            properties["query"] = rng.choice(("running shoes", "rain jacket", "usb-c charger"))
        events.append(
            ClickEvent(
                event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                event_type=event_type,
                user_id=f"u-{rng.randrange(50_000):06d}",
                session_hint=f"s-{rng.getrandbits(48):012x}" if rng.random() < 0.7 else None,
                product_id=f"sku-{rng.randrange(10_000):05d}" if has_product else None,
                amount_minor=rng.randrange(199, 49_999) if has_amount else None,
                currency=_CURRENCY[country] if has_amount else None,
                event_time=1_717_236_000_000 + i * 137 + rng.randrange(1000),
                device=rng.choice(_DEVICES),
                country=country,
                user_agent=rng.choice(_USER_AGENTS),
                referrer=rng.choice(_REFERRERS) if rng.random() < 0.3 else None,
                properties=properties,
            )
        )
    return events


def enriched_events(events: Sequence[ClickEvent], seed: int = 43) -> list[EnrichedEvent]:
    """The events joined with a profile (most users) and a product (where the event has one)."""
    rng = random.Random(seed)
    enriched = []
    for event in events:
        user = None
        if rng.random() < 0.9:
            user = UserProfile(event.user_id, rng.choice(("new", "returning", "vip")), rng.choice("bsg"), event.country)
        product = None
        if event.product_id and rng.random() < 0.95:
            currency = event.currency or _CURRENCY[event.country]
            product = Product(event.product_id, rng.choice(_CATEGORIES), "Acme", rng.randrange(199, 49_999), currency)
        errors = [] if user else ["user_not_found"]
        if event.product_id and not product:
            errors.append("product_not_found")
        status = "enriched" if not errors else ("partial" if user or product else "not_enriched")
        enriched.append(EnrichedEvent(event, user, product, status, errors))
    return enriched


class Candidate(NamedTuple):
    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


class Result(NamedTuple):
    record: str
    coder: str
    bytes_per_element: float
    elements_per_s: float


def candidates(record_type: type, contract: str) -> list[Candidate]:
    """The coders to compare for one record type, pickle first (the baseline)."""
    pickle_coder = beam.coders.PickleCoder()
    fast = beam.coders.FastPrimitivesCoder()
    row = beam.coders.registry.get_coder(record_type)
    if not isinstance(row, beam.coders.RowCoder):
        raise SystemExit(f"{record_type.__name__} is not registered with RowCoder but {row!r}")
    serde = ConfluentAvroSerde(InMemoryRegistry(), catalog.schema_json(contract), f"{contract}-value")
    return [
        Candidate("PickleCoder", pickle_coder.encode, pickle_coder.decode),
        Candidate("FastPrimitivesCoder (fallback)", fast.encode, fast.decode),
        Candidate("RowCoder (registered)", row.encode, row.decode),
        Candidate(
            "Confluent Avro (serde+to/from_avro)",
            lambda record: serde.encode(to_avro(record)),
            lambda data: from_avro(record_type, serde.decode(data)),
        ),
    ]


def measure(candidate: Candidate, elements: Sequence[Any], repeats: int) -> tuple[float, float]:
    """(mean encoded bytes, best encode+decode elements/s); checks the round trip first."""
    encode, decode = candidate.encode, candidate.decode
    for element in elements[:100]:
        if decode(encode(element)) != element:
            raise SystemExit(f"{candidate.name} does not round-trip {element!r}")
    size = sum(len(encode(e)) for e in elements) / len(elements)
    best = float("inf")
    for attempt in range(repeats + 1):  # attempt 0 is the warm-up
        start = time.perf_counter()
        for element in elements:
            decode(encode(element))
        elapsed = time.perf_counter() - start
        if attempt:
            best = min(best, elapsed)
    return size, len(elements) / best


def render(results: Sequence[Result]) -> str:
    """One table, each record's rows relative to its own PickleCoder row."""
    header = ("record", "coder", "bytes/element", "encode+decode elements/s", "size vs pickle", "speed vs pickle")
    rows = []
    baseline: dict[str, Result] = {}
    for r in results:
        base = baseline.setdefault(r.record, r)
        rows.append(
            (
                r.record,
                r.coder,
                f"{r.bytes_per_element:,.1f}",
                f"{r.elements_per_s:,.0f}",
                f"{r.bytes_per_element / base.bytes_per_element:.2f}x",
                f"{r.elements_per_s / base.elements_per_s:.2f}x",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    align = ["<", "<", ">", ">", ">", ">"]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True))

    out = [line(header), "-+-".join("-" * w for w in widths)]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("-+-".join("-" * w for w in widths))
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="elements per timed pass (default 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes, best one counts (default 3)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeats < 1:
        parser.error("--n and --repeats must be positive")

    started = time.perf_counter()
    clicks = click_events(args.n)
    datasets = [(ClickEvent, "clickstream_event", clicks), (EnrichedEvent, "enriched_event", enriched_events(clicks))]
    results = []
    for record_type, contract, elements in datasets:
        for candidate in candidates(record_type, contract):
            size, rate = measure(candidate, elements, args.repeats)
            results.append(Result(record_type.__name__, candidate.name, size, rate))

    print(
        f"Python {platform.python_version()}, Beam {beam.__version__} "
        f"(compiled coders: {not coder_impl.__file__.endswith('.py')}), n={args.n} distinct elements, "
        f"best of {args.repeats} after a warm-up"
    )
    print(render(results))
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
