"""The ingestion service against the real local broker and schema registry."""

import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict

import httpx
import pytest
import uvicorn
from confluent_kafka import Consumer, TopicPartition

from ingestion.http import create_app
from ingestion.limiter import AimdRateLimiter, LimiterSettings
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import ProducerSettings, Publisher
from ingestion.service import IngestionService
from ingestion.signals import ConsumerLag
from runners.stack.kafka import ensure_topics
from schemas.catalog import schema_json
from schemas.records import ClickEvent, from_avro, to_avro
from schemas.registry import ConfluentRegistry
from schemas.serde import ConfluentAvroSerde
from tests.unit.conftest import make_event

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(kafka_broker):
    name = f"it-ingest-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker.bootstrap, [name], partitions=3)
    return name


@pytest.fixture
def publisher(kafka_broker, schema_registry_service, topic):
    pub = Publisher(
        {"bootstrap.servers": kafka_broker.bootstrap},
        topic,
        ConfluentRegistry(schema_registry_service.url),
        ProducerSettings(),
        IngestionMetrics(),
    )
    yield pub
    pub.close()


def _consume_all(bootstrap, topic, expected, timeout=30.0):
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    messages, deadline = [], time.monotonic() + timeout
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages.append(msg)
    finally:
        consumer.close()
    return messages


def test_every_accepted_event_is_acknowledged_and_reads_back_identical(
    kafka_broker, schema_registry_service, publisher
):
    now = int(time.time() * 1000)
    sent = [
        make_event(event_id=f"e{i}", user_id=f"u{i % 7}", event_time=now - i, referrer="newsletter" if i % 2 else None)
        for i in range(500)
    ]
    for event in sent:
        publisher.publish(event)
    assert publisher.flush() == 0
    assert (publisher.acked, publisher.failed) == (500, 0)

    reader = ConfluentAvroSerde(ConfluentRegistry(schema_registry_service.url), schema_json("clickstream_event"))
    messages = _consume_all(kafka_broker.bootstrap, publisher.topic, 500)
    received = {e.event_id: e for e in (from_avro(ClickEvent, reader.decode(m.value())) for m in messages)}
    assert len(messages) == 500
    assert received == {e.event_id: e for e in sent}
    decoded = [from_avro(ClickEvent, reader.decode(m.value())) for m in messages]
    assert all(m.timestamp()[1] == e.event_time for m, e in zip(messages, decoded, strict=True))


def test_per_key_order_holds_for_keyed_event_types(kafka_broker, schema_registry_service, publisher):
    now = int(time.time() * 1000)
    for seq in range(400):
        user = f"u{seq % 5}"
        publisher.publish(
            make_event(event_id=f"{user}-{seq:04d}", user_id=user, event_type="add_to_cart", event_time=now)
        )
    assert publisher.flush() == 0

    reader = ConfluentAvroSerde(ConfluentRegistry(schema_registry_service.url), schema_json("clickstream_event"))
    sequences, partitions = defaultdict(list), defaultdict(set)
    for msg in sorted(_consume_all(kafka_broker.bootstrap, publisher.topic, 400), key=lambda m: m.offset()):
        user = msg.key().decode()
        partitions[user].add(msg.partition())
        sequences[user].append(reader.decode(msg.value())["event_id"])
    assert sorted(partitions) == [f"u{i}" for i in range(5)]
    assert all(len(p) == 1 for p in partitions.values()), "a user's events were spread over partitions"
    for user, ids in sequences.items():
        assert ids == sorted(ids), f"{user}: events out of publish order"
        assert len(ids) == 80


def _serve(service, **limits):
    app = create_app(service, **{"max_body_bytes": 50_000, **limits})
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def test_http_batch_returns_a_result_per_event(kafka_broker, publisher):
    metrics = IngestionMetrics()
    service = IngestionService(publisher, metrics)
    server, thread, base = _serve(service)
    now = int(time.time() * 1000)
    batch = [
        to_avro(make_event(event_id="ok-1", event_time=now)),
        {"event_type": "refund", "user_id": "u1", "event_time": now, "country": "DE"},
        {**to_avro(make_event(event_id="ok-2", event_time=now)), "country": "se"},
        {**to_avro(make_event(event_id="bad-amount", event_time=now)), "amount_minor": -5},
    ]
    try:
        response = httpx.post(f"{base}/v1/events", json={"events": batch}, timeout=10)
        too_big = httpx.post(f"{base}/v1/events", content=b"[" + b" " * 60_000 + b"]", timeout=10)
        not_json = httpx.post(f"{base}/v1/events", content=b"{nope", timeout=10)
        scraped = httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert response.status_code == 207
    body = response.json()
    assert (body["acknowledged"], body["rejected"], body["not_acknowledged"]) == (2, 2, 0)
    results = body["results"]
    assert [r["status"] for r in results] == ["acknowledged", "rejected", "acknowledged", "rejected"]
    assert results[0]["event_id"] == "ok-1"
    assert results[1]["code"] == "schema_violation" and "event_type" in results[1]["reason"]
    assert results[3]["code"] == "amount_out_of_range"
    assert too_big.status_code == 413 and not_json.status_code == 400
    assert publisher.in_doubt == 0 and publisher.acked == 2  # acknowledged before the answer, not after a flush
    assert 'ingestion_events_rejected_total{reason="schema_violation"} 1.0' in scraped
    assert "ingestion_publish_latency_seconds_bucket" in scraped
    ids = {m.value() for m in _consume_all(kafka_broker.bootstrap, publisher.topic, 2)}
    assert len(ids) == 2


def test_bad_http_requests_get_their_status_and_publish_nothing(publisher):
    """Non-JSON 400, wrong types 207 (all rejected), batch over the limit 413, body over the cap 413, a body
    sent too slowly 408; not one event reaches the producer."""
    service = IngestionService(publisher, IngestionMetrics())
    server, thread, base = _serve(service, max_events=3, body_timeout=1.0)
    host, port = base.removeprefix("http://").split(":")
    sent_before = publisher.sent
    now = int(time.time() * 1000)
    wrong_types = [{"event_type": 7, "user_id": ["u"], "event_time": "soon", "country": 1}]
    try:
        statuses = {
            "non_json": httpx.post(f"{base}/v1/events", content=b"\x00{not json", timeout=10).status_code,
            "wrong_types": httpx.post(f"{base}/v1/events", json=wrong_types, timeout=10),
            "over_limit": httpx.post(
                f"{base}/v1/events", json=[to_avro(make_event(event_time=now))] * 4, timeout=10
            ).status_code,
            "over_cap": httpx.post(f"{base}/v1/events", content=b"[" + b" " * 60_000 + b"]", timeout=10).status_code,
        }
        with socket.create_connection((host, int(port)), timeout=10) as slow:  # slow-loris: 10 bytes, then silence
            slow.sendall(b'POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[{"event')
            started = time.monotonic()
            answer = slow.recv(200).decode()
            statuses["slow_loris"] = int(answer.split()[1])
            waited = time.monotonic() - started
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    wrong = statuses["wrong_types"]
    assert wrong.status_code == 207 and wrong.json()["rejected"] == 1, wrong.text
    assert wrong.json()["results"][0]["code"] == "schema_violation"
    statuses["wrong_types"] = wrong.status_code
    assert statuses == {"non_json": 400, "wrong_types": 207, "over_limit": 413, "over_cap": 413, "slow_loris": 408}
    assert waited < 5
    assert publisher.sent == sent_before


def test_limiter_slows_down_while_a_real_consumer_group_lags_and_recovers(kafka_broker, publisher):
    now = int(time.time() * 1000)
    for i in range(300):
        publisher.publish(make_event(event_id=f"l{i}", event_time=now))
    assert publisher.flush() == 0
    group = f"pipeline-{uuid.uuid4().hex[:6]}"
    client = {"bootstrap.servers": kafka_broker.bootstrap}
    lag = ConsumerLag(client, group, publisher.topic)
    settings = LimiterSettings(initial_rate=1000, min_rate=100, max_rate=1000, increase_step=100, max_lag=100)
    limiter = AimdRateLimiter(settings, {"lag": (lag, 100.0)})
    assert lag.read() == 300  # the group has committed nothing yet
    assert [limiter.adjust() for _ in range(3)] == [500, 250, 125]

    consumer = Consumer({**client, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([publisher.topic])
    consumed, deadline = 0, time.monotonic() + 30
    while consumed < 300 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            consumed += 1
    consumer.commit(asynchronous=False)
    consumer.close()
    assert lag.read() == 0
    assert [limiter.adjust() for _ in range(3)] == [225, 325, 425]


def test_sigterm_flushes_and_loses_nothing(kafka_broker, schema_registry_service, topic, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingestion",
            "--bootstrap",
            kafka_broker.bootstrap,
            "--registry-url",
            schema_registry_service.url,
            "--topic",
            topic,
            "--rate",
            "2000",
            "--linger-ms",
            "500",
            "generate",
            "--events",
            "50000",
            "--invalid-share",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []  # the first progress line: signal handlers are in and events are flowing (not a fixed sleep,
    for line in proc.stderr:  # which a loaded machine outlasts while the process is still importing)
        seen.append(line)
        if line.startswith("sent ") and not line.startswith("sent 0 "):
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=60)
    stderr = "".join(seen) + rest
    assert proc.returncode == 0, stderr[-2000:]
    done = re.search(r"done: sent ([\d,]+) acked ([\d,]+) failed 0", stderr)
    assert done, stderr[-2000:]
    sent, acked = (int(g.replace(",", "")) for g in done.groups())
    assert 0 < sent < 50_000 and sent == acked
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": "count"})
    try:
        total = 0
        for partition in range(3):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
    finally:
        consumer.close()
    assert total == acked


def test_a_full_local_queue_is_waited_out_not_dropped(kafka_broker, schema_registry_service, topic):
    metrics = IngestionMetrics()
    publisher = Publisher(
        {"bootstrap.servers": kafka_broker.bootstrap},
        topic,
        ConfluentRegistry(schema_registry_service.url),
        ProducerSettings(queue_max_messages=5, linger_ms=1),
        metrics,
    )
    now = int(time.time() * 1000)
    for i in range(2000):
        publisher.publish(make_event(event_id=f"q{i}", event_time=now))
    assert publisher.close() == 0
    assert (publisher.acked, publisher.failed) == (2000, 0)
    assert metrics.buffer_full._value.get() > 0  # the queue really was full, and nothing was lost
    assert len(_consume_all(kafka_broker.bootstrap, topic, 2000)) == 2000


def test_exit_code_is_1_when_kafka_does_not_acknowledge(schema_registry_service):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingestion",
            "--bootstrap",
            "127.0.0.1:1",  # nothing listens here
            "--registry-url",
            schema_registry_service.url,
            "--delivery-timeout-ms",
            "1500",
            "generate",
            "--events",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert re.search(r"error: \d+ events failed, 0 still unacknowledged", result.stderr), result.stderr[-1500:]


def test_latency_signal_reads_a_real_prometheus(prometheus_server):
    from ingestion.signals import PrometheusLatency

    url = f"http://{prometheus_server.address}"
    assert PrometheusLatency(url, "vector(2.5)").read() == 2.5
    assert PrometheusLatency(url, 'up{job="no-such-job"}').read() is None  # no series: no opinion, no change
    assert PrometheusLatency(url, "this is not promql").read() is None
    assert PrometheusLatency("http://127.0.0.1:1", "vector(1)").read() is None  # unreachable
