"""The physical reference of the end-to-end benchmark: one confluent-kafka consumer -> producer loop.

``--mode raw`` forwards the bytes untouched (what the broker, the client and one Python process cost);
``--mode avro`` also decodes the Confluent Avro event and encodes it again (plus the cost of the format).
A record that does not decode is forwarded as it is, so every input record gives one output record. Runs
until SIGTERM/SIGINT, then flushes; output timestamps are the time of production (the latency's end).
"""

import argparse
import signal
import sys
import threading

from confluent_kafka import Consumer, KafkaException, Producer

from schemas.catalog import schema_json
from schemas.registry import ConfluentRegistry
from schemas.serde import ConfluentAvroSerde, SerdeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.passthrough", description=__doc__)
    parser.add_argument("--mode", choices=("raw", "avro"), required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry-url", required=True)
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", action="append", default=[], metavar="NAME=TOPIC", help="only events= is used")
    args = parser.parse_args(argv)
    out = dict(t.split("=", 1) for t in args.topic)["events"]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    transcode = None
    if args.mode == "avro":
        registry = ConfluentRegistry(args.registry_url)
        reader = ConfluentAvroSerde(registry, schema_json("clickstream_event"))
        writer = ConfluentAvroSerde(registry, schema_json("clickstream_event"), subject=f"{out}-value")
        writer.schema_id()

        def transcode(value: bytes) -> bytes:
            try:
                return writer.encode(reader.decode(value))
            except SerdeError:
                return value

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
        }
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 10, "batch.size": 65_536, "acks": "all"})
    consumer.subscribe([args.input_topic])
    try:
        while not stop.is_set():
            for msg in consumer.consume(1000, timeout=0.02):
                if msg.error():
                    raise KafkaException(msg.error())
                value = msg.value()
                if transcode is not None and value:
                    value = transcode(value)
                while True:
                    try:
                        producer.produce(out, value=value, key=msg.key())
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
    finally:
        producer.flush(30)
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
