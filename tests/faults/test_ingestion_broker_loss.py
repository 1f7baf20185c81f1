"""The ingestion service's broker stopped (by pid) while HTTP clients post, then restarted: an answer is the
truth, so every event answered "acknowledged" is in Kafka and every other one was answered with why."""

import threading
import time
import uuid

import httpx
import pytest
import uvicorn
from confluent_kafka import Consumer, TopicPartition

from ingestion.http import create_app
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import ProducerSettings, Publisher
from ingestion.service import IngestionService
from runners.stack.kafka import ensure_topics
from schemas.catalog import schema_json
from schemas.records import to_avro
from schemas.registry import ConfluentRegistry
from schemas.serde import ConfluentAvroSerde
from tests.faults.conftest import FAULT_STACK
from tests.unit.conftest import make_event

pytestmark = pytest.mark.integration
CLIENTS = 3
BATCH = 20
ACK_TIMEOUT_S = 6.0  # as `python -m ingestion serve` does, the producer gives up before the answer does


def _serve(service: IngestionService) -> tuple[uvicorn.Server, threading.Thread, str]:
    server = uvicorn.Server(uvicorn.Config(create_app(service, ack_timeout=ACK_TIMEOUT_S), port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def _post_until(base: str, stop: threading.Event, answers: dict[str, str], lock: threading.Lock) -> None:
    """Posts batches of new events until ``stop``; records each event's answered status by event id."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            now = int(time.time() * 1000)
            events = [to_avro(make_event(event_id=uuid.uuid4().hex, event_time=now)) for _ in range(BATCH)]
            response = client.post(f"{base}/v1/events", json={"events": events})
            assert response.status_code in (200, 503), response.text
            for result in response.json()["results"]:
                assert result["status"] == "acknowledged" or (result["code"] and result["reason"]), result
                with lock:
                    answers[result["event_id"]] = result["status"]
            time.sleep(0.1)


def _event_ids(topic: str) -> set[str]:
    serde = ConfluentAvroSerde(ConfluentRegistry(FAULT_STACK.registry_url), schema_json("clickstream_event"))
    consumer = Consumer({"bootstrap.servers": FAULT_STACK.kafka_bootstrap, "group.id": f"check-{uuid.uuid4().hex}"})
    ids = set()
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            consumer.assign([TopicPartition(topic, partition, low)])
            offset = low
            while offset < high:
                message = consumer.poll(10)
                assert message is not None and message.error() is None, message and message.error()
                ids.add(serde.decode(message.value())["event_id"])
                offset = message.offset() + 1
    finally:
        consumer.close()
    return ids


def test_every_acknowledged_event_is_in_kafka_across_a_broker_restart(fault_stack):
    topic = f"fault-ingest-{uuid.uuid4().hex[:8]}"
    ensure_topics(FAULT_STACK.kafka_bootstrap, [topic], partitions=3)
    publisher = Publisher(
        {"bootstrap.servers": FAULT_STACK.kafka_bootstrap},
        topic,
        ConfluentRegistry(FAULT_STACK.registry_url),
        ProducerSettings(delivery_timeout_ms=int(ACK_TIMEOUT_S * 1000) - 1000),
        IngestionMetrics(),
    )
    server, thread, base = _serve(IngestionService(publisher, IngestionMetrics()))
    answers: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    clients = [threading.Thread(target=_post_until, args=(base, stop, answers, lock)) for _ in range(CLIENTS)]
    try:
        for client in clients:
            client.start()
        time.sleep(3)
        fault_stack.kafka.stop()
        time.sleep(15)
        fault_stack.kafka.start()
        time.sleep(8)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=90)
        server.should_exit = True
        thread.join(timeout=10)
        publisher.close(30)
    acknowledged = {event_id for event_id, status in answers.items() if status == "acknowledged"}
    refused = set(answers) - acknowledged
    in_kafka = _event_ids(topic)
    print(
        f"\ningestion broker lost 15 s: {len(answers)} answered, {len(acknowledged)} acknowledged, "
        f"{len(refused)} not acknowledged ({len(refused & in_kafka)} of them in Kafka anyway), "
        f"{len(acknowledged - in_kafka)} acknowledged but missing"
    )
    assert acknowledged - in_kafka == set()
    assert refused, "no post met the outage: the case proves nothing"
    assert len(acknowledged) > BATCH * CLIENTS * 2  # before and after the outage
