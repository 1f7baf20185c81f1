"""A steady stream of input for the live monitoring tests: valid events stamped *now* (so the Kafka timestamp
is the real publish time and end-to-end latency is real), with an adjustable share of undecodable records."""

import itertools
import threading
import time

from confluent_kafka import Producer

from schemas import endpoints
from schemas.catalog import schema_json
from schemas.records import to_avro
from schemas.registry import SchemaRegistry
from schemas.serde import ConfluentAvroSerde
from tests.unit.conftest import make_event

#: Seeded by the stack (runners/stack/seed.py: users u00000.., products p00000..); ids cycle within these.
USERS, PRODUCTS = 300, 100


class Feed:
    """Publishes ``rate`` records per second to ``topic`` in a thread until ``stop()``; ``bad_share`` of them are
    garbage bytes (dead letters at decode). Both can change while it runs; rate 0 pauses it."""

    def __init__(self, bootstrap: str, topic: str, registry: SchemaRegistry, rate: float = 20.0) -> None:
        self.rate = rate
        self.bad_share = 0.0
        self.published = 0
        self._topic = topic
        self._serde = ConfluentAvroSerde(
            registry, schema_json("clickstream_event"), subject=endpoints.value_subject(topic)
        )
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="live-feed", daemon=True)

    def start(self) -> "Feed":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._producer.flush(10)

    def _run(self) -> None:
        bad_due = 0.0
        for n in itertools.count():
            while not self.rate:
                if self._stop.wait(0.1):
                    return
            if self._stop.wait(1.0 / self.rate):
                return
            bad_due += self.bad_share
            if bad_due >= 1.0:
                bad_due -= 1.0
                value = b"not a confluent avro record"
            else:
                event = make_event(
                    event_id=f"live-{n}",
                    event_type="product_view",
                    user_id=f"u{n % USERS:05d}",
                    product_id=f"p{n % PRODUCTS:05d}",
                    amount_minor=None,
                    currency=None,
                    event_time=int(time.time() * 1000),
                )
                value = self._serde.encode(to_avro(event))
            self._producer.produce(self._topic, value=value, key=f"u{n % USERS:05d}".encode())
            self._producer.poll(0)
            self.published += 1
