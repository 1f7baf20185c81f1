"""A seeded, deterministic clickstream generator with a realistic shape.

Zipf-distributed users and products, funnel-shaped sessions with gaps, out-of-order and late
arrivals (client clock skew up to ``max_skew_seconds``), some records later than any allowed
lateness, invalid events, malformed bytes, bots and internal test users, events a producer sent
twice (``duplicate``: the same event again a few seconds later), and a mix of schema versions (old
producers still on v1). Every record says what it is (``kind``), so tests and
benchmarks can compute the expected outputs.
"""

import bisect
import random
import struct
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from schemas import endpoints
from schemas.catalog import schema_json
from schemas.records import ClickEvent, Product, UserProfile, to_avro
from schemas.registry import SchemaRegistry
from schemas.serde import ConfluentAvroSerde

RAW_SUBJECT = endpoints.value_subject(endpoints.RAW_TOPIC)

COUNTRIES = {"DE": "EUR", "FR": "EUR", "US": "USD", "GB": "GBP", "PL": "PLN", "SE": "SEK"}
CATEGORIES = ("electronics", "books", "fashion", "home", "toys", "sports")
DEVICES = ("desktop", "mobile", "tablet")
KINDS = ("valid", "late", "too_late", "invalid", "malformed", "bot", "test_user", "duplicate")


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    events: int = 3000
    start_ms: int = 1_700_000_000_000
    duration_seconds: int = 1800
    users: int = 400
    products: int = 150
    zipf_exponent: float = 1.1
    catalogue_coverage: float = 0.95  # share of product ids the catalogue knows (rest: "not found")
    profile_coverage: float = 0.97  # share of users with a profile (rest: "not found")
    invalid_share: float = 0.03
    malformed_share: float = 0.01
    late_share: float = 0.06
    too_late_share: float = 0.01
    bot_share: float = 0.02
    test_user_share: float = 0.01
    duplicate_share: float = 0.01  # of valid events, resent by the producer 0.2-5 s later
    v1_share: float = 0.3
    max_skew_seconds: int = 300
    too_late_after_seconds: int = 900  # beyond window size + allowed lateness of the default settings
    future_seconds: int = 3600  # how far ahead of ``now_ms`` an invalid "from the future" event claims to be


class GeneratedRecord(NamedTuple):
    """One record as a producer would publish it; ``arrival_ms`` is when it reaches Kafka."""

    arrival_ms: int
    key: bytes | None
    value: bytes
    kind: str
    event: ClickEvent | None


def _zipf_sampler(rng: random.Random, n: int, exponent: float):
    cumulative, total = [], 0.0
    for rank in range(1, n + 1):
        total += 1.0 / rank**exponent
        cumulative.append(total)
    return lambda: bisect.bisect_left(cumulative, rng.random() * total)


def user_id(i: int) -> str:
    return f"u{i:05d}"


def product_id(i: int) -> str:
    return f"p{i:05d}"


def reference_data(config: GeneratorConfig) -> tuple[dict[str, UserProfile], dict[str, Product]]:
    """User profiles and the product catalogue that match the generated events."""
    rng = random.Random(config.seed * 7919)
    countries = list(COUNTRIES)
    users = {
        user_id(i): UserProfile(
            user_id(i),
            rng.choice(("new", "returning", "vip")),
            rng.choice(("none", "silver", "gold")),
            rng.choice(countries),
        )
        for i in range(config.users)
        if rng.random() < config.profile_coverage
    }
    products = {}
    for i in range(config.products):
        if rng.random() >= config.catalogue_coverage:
            continue
        products[product_id(i)] = Product(
            product_id(i), rng.choice(CATEGORIES), f"brand{rng.randrange(20):02d}", rng.randrange(199, 99_999), "EUR"
        )
    return users, products


class _Session:
    """Walks one user's funnel: views, searches, cart, checkout, purchase."""

    def __init__(self, rng: random.Random, user: str, country: str, device: str, next_product, start_ms: int):
        self.rng, self.user, self.country, self.device = rng, user, country, device
        self.next_product, self.time_ms, self.hint = (
            next_product,
            start_ms,
            uuid.UUID(int=rng.getrandbits(128)).hex[:12],
        )
        self.cart: list[str] = []

    def next_event(self) -> ClickEvent:
        rng = self.rng
        self.time_ms += rng.randint(2_000, 90_000)
        roll = rng.random()
        product, amount, currency = None, None, None
        if self.cart and roll < 0.15:
            event_type, product = "purchase", rng.choice(self.cart)
            amount, currency = rng.randrange(199, 99_999), COUNTRIES[self.country]
        elif self.cart and roll < 0.25:
            event_type = "checkout"
        elif roll < 0.45:
            event_type = "page_view"
        elif roll < 0.55:
            event_type = "search"
        elif roll < 0.85:
            event_type, product = "product_view", product_id(self.next_product())
        else:
            event_type, product = "add_to_cart", product_id(self.next_product())
            self.cart.append(product)
        properties = {"page": f"/{event_type.replace('_', '-')}"}
        if event_type == "search":
            properties["query"] = rng.choice(("shoes", "laptop", "lego", "novel", "lamp"))
        return ClickEvent(
            event_id=str(uuid.UUID(int=rng.getrandbits(128))),
            event_type=event_type,
            user_id=self.user,
            session_hint=self.hint,
            product_id=product,
            amount_minor=amount,
            currency=currency,
            event_time=self.time_ms,
            device=self.device,
            country=self.country,
            user_agent=f"Mozilla/5.0 ({self.device})",
            referrer=None,
            properties=properties,
        )


def _corrupt(rng: random.Random, event: ClickEvent, future_ms: int) -> ClickEvent:
    choice = rng.randrange(5)
    if choice == 0:
        return event._replace(event_type="purchase", product_id=event.product_id or "p00001", amount_minor=None)
    if choice == 1:
        return event._replace(country="Germany")
    if choice == 2:
        return event._replace(amount_minor=-500, currency="EUR")
    if choice == 3:
        return event._replace(event_time=future_ms)
    return event._replace(amount_minor=1000, currency="euro")


def _malformed(rng: random.Random, framed: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return b"\x01" + framed[1:]  # wrong magic byte
    if choice == 1:
        return framed[: max(6, len(framed) // 3)]  # truncated
    if choice == 2:
        return b"\x00" + struct.pack(">I", 999_999) + framed[5:]  # unknown schema id
    return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 40)))  # garbage


class _Writer:
    """Frames events as a v1 or v2 producer would (each registers its own schema version)."""

    def __init__(self, registry: SchemaRegistry):
        self.v1 = ConfluentAvroSerde(registry, schema_json("clickstream_event.v1"), RAW_SUBJECT)
        self.v2 = ConfluentAvroSerde(registry, schema_json("clickstream_event.v2"), RAW_SUBJECT)

    def encode(self, event: ClickEvent, use_v1: bool) -> bytes:
        record: dict[str, Any] = to_avro(event)
        if use_v1:
            record.pop("referrer")
            return self.v1.encode(record)
        return self.v2.encode(record)


class GeneratedEvent(NamedTuple):
    """One event as a source emits it: when it arrives, what it is, and whether an old (v1) producer sent it."""

    arrival_ms: int
    kind: str
    event: ClickEvent
    schema_v1: bool


def events(config: GeneratorConfig, now_ms: int | None = None) -> list[GeneratedEvent]:
    """``config.events`` events sorted by arrival time; ``now_ms`` anchors "too far in the future".

    ``malformed`` events are well-formed here; ``generate()`` breaks their bytes, a JSON source its shape.
    """
    rng = random.Random(config.seed)
    next_user = _zipf_sampler(rng, config.users, config.zipf_exponent)
    next_product = _zipf_sampler(rng, config.products, config.zipf_exponent)
    end_ms = config.start_ms + config.duration_seconds * 1000
    now_ms = end_ms if now_ms is None else now_ms
    sessions: list[_Session] = []
    drawn: list[GeneratedEvent] = []
    while len(drawn) < config.events:
        if not sessions or rng.random() < 0.08:
            uid = next_user()
            sessions.append(
                _Session(
                    rng,
                    user_id(uid),
                    list(COUNTRIES)[uid % len(COUNTRIES)],
                    rng.choice(DEVICES),
                    next_product,
                    config.start_ms + rng.randrange(config.duration_seconds * 1000 // 2),
                )
            )
        session = rng.choice(sessions)
        event = session.next_event()
        if event.event_time >= end_ms:
            sessions.remove(session)
            continue
        drawn.append(_draw(rng, config, event, now_ms))
        if drawn[-1].kind == "valid" and len(drawn) < config.events and rng.random() < config.duplicate_share:
            drawn.append(drawn[-1]._replace(arrival_ms=drawn[-1].arrival_ms + rng.randint(200, 5000), kind="duplicate"))
    drawn.sort(key=lambda e: e.arrival_ms)
    return drawn


def generate(config: GeneratorConfig, registry: SchemaRegistry, now_ms: int | None = None) -> list[GeneratedRecord]:
    """``events()`` framed as Confluent Avro by v1/v2 producers, malformed ones with broken bytes."""
    rng = random.Random(config.seed + 1)
    writer = _Writer(registry)
    records = []
    for drawn in events(config, now_ms):
        value = writer.encode(drawn.event, drawn.schema_v1)
        if drawn.kind == "malformed":
            value = _malformed(rng, value)
        records.append(GeneratedRecord(drawn.arrival_ms, drawn.event.user_id.encode(), value, drawn.kind, drawn.event))
    return records


def _draw(rng: random.Random, config: GeneratorConfig, event: ClickEvent, now_ms: int) -> GeneratedEvent:
    use_v1 = rng.random() < config.v1_share
    if not use_v1:
        event = event._replace(referrer=rng.choice((None, "https://search.example/", "newsletter")))
    delay_ms = rng.randint(20, 1500)
    roll = rng.random()
    kind = "valid"
    for name, share in (
        ("invalid", config.invalid_share),
        ("malformed", config.malformed_share),
        ("late", config.late_share),
        ("too_late", config.too_late_share),
        ("bot", config.bot_share),
        ("test_user", config.test_user_share),
    ):
        if roll < share:
            kind = name
            break
        roll -= share
    if kind == "invalid":
        event = _corrupt(rng, event, now_ms + config.future_seconds * 1000)
    elif kind == "late":
        delay_ms = rng.randint(30_000, config.max_skew_seconds * 1000)
    elif kind == "too_late":
        delay_ms = config.too_late_after_seconds * 1000 + rng.randint(60_000, 300_000)
    elif kind == "bot":
        event = event._replace(user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)")
    elif kind == "test_user":
        event = event._replace(user_id="test-" + event.user_id)
    return GeneratedEvent(event.event_time + delay_ms, kind, event, use_v1)
