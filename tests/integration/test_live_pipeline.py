"""The live pipeline on Prism against the real broker, registry, PostgreSQL and Redis: Kafka in, Kafka out.

Each test has its own topics and consumer group, so tests never see each other's records.
"""

import copy
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from beam_pipelines.clickstream import output_contract
from beam_pipelines.settings import PipelineSettings
from ingestion.generator import GeneratorConfig
from runners.live import (
    committed_offsets,
    end_offsets,
    publish_sample,
    read_range,
    registry_for,
    run_live,
    summarize,
)
from runners.prism import PrismJobServer
from runners.profiles import RunnerSettings, pipeline_args
from schemas.catalog import schema_json
from schemas.records import to_avro
from schemas.serde import ConfluentAvroSerde
from tests.unit.conftest import make_event

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _args(prism: PrismJobServer) -> list[str]:
    return pipeline_args(RunnerSettings(runner="prism", prism_job_endpoint=prism.endpoint))


def _cli(settings: PipelineSettings, prism: PrismJobServer, *extra: str) -> list[str]:
    sets = [
        f"kafka.bootstrap_servers={settings.kafka.bootstrap_servers}",
        f"kafka.input_topic={settings.kafka.input_topic}",
        f"kafka.consumer_group={settings.kafka.consumer_group}",
        f"registry.url={settings.registry.url}",
        f"stores.postgres_dsn={settings.stores.postgres_dsn.get_secret_value()}",
        f"stores.redis_url={settings.stores.redis_url}",
        f"runner.prism_job_endpoint={prism.endpoint}",
        *(f"kafka.output_topics.{n}={t}" for n, t in settings.kafka.output_topics.items()),
    ]
    return [sys.executable, "-m", "runners", *[a for s in sets for a in ("--set", s)], *extra]


def test_live_run_reconciles_with_both_schema_versions_and_commits_every_offset(live_settings, prism, capsys):
    """(a) every output read back and reconciled; (d) v1 and v2 writers in one run; (e) committed == end offsets."""
    code = run_live(live_settings, _args(prism), GeneratorConfig(seed=21, events=1500, v1_share=0.4))
    out = capsys.readouterr().out
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith("reconciliation:"))
    assert "-> OK; lost 0; duplicates 0" in line, line
    assert "in 1500 = " in line
    for output in ("orders", "enriched", "window_metrics", "sessions", "filtered", "dead_letters"):
        count = int(next(x for x in out.splitlines() if x.strip().startswith(output + " ")).split()[-1])
        assert count > 0, f"{output} is empty:\n{out}"
    topic = live_settings.kafka.input_topic
    end = end_offsets(live_settings, topic)
    assert committed_offsets(live_settings, topic, list(end)) == end


def test_v1_records_are_read_as_v2_with_the_default(live_settings, prism, capsys):
    """(d) an old producer's record comes out enriched with referrer=None, next to v2 records with a referrer."""
    config = GeneratorConfig(
        seed=5,
        events=300,
        v1_share=0.5,
        invalid_share=0,
        malformed_share=0,
        bot_share=0,
        test_user_share=0,
        late_share=0,
        too_late_share=0,
    )
    assert run_live(live_settings, _args(prism), config) == 0
    registry = registry_for(live_settings)
    summary = summarize(
        live_settings,
        registry,
        {},
        end_offsets(live_settings, live_settings.kafka.input_topic),
        {"enriched": {}, **{n: {} for n in live_settings.output_names() if n != "enriched"}},
        1.0,
    )
    assert summary.reconciliation.ok
    serde = ConfluentAvroSerde(registry, schema_json("enriched_event"))
    topic = live_settings.topic("enriched")
    referrers = {
        serde.decode(m.value())["event"]["referrer"]
        for m in read_range(live_settings, topic, {}, end_offsets(live_settings, topic))
    }
    assert None in referrers and len(referrers) > 1


def test_idle_partition_does_not_hold_windows_back(live_settings, prism):
    """(b) partitions 1 and 2 get nothing; following the topic, the windows of partition 0's data still fire."""
    settings = live_settings
    registry = registry_for(settings)
    serde = ConfluentAvroSerde(
        registry, schema_json("clickstream_event"), subject=f"{settings.kafka.input_topic}-value"
    )
    now = int(time.time() * 1000)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for i in range(60):  # two minutes of events ending 20 s ago: their windows end before the idle horizon
        event = make_event(
            event_id=f"idle-{i}",
            user_id=f"u{i % 5:05d}",
            event_type="page_view",
            event_time=now - 140_000 + i * 2_000,
            product_id=None,
            amount_minor=None,
            currency=None,
        )
        producer.produce(
            settings.kafka.input_topic, serde.encode(to_avro(event)), partition=0, timestamp=event.event_time
        )
    assert producer.flush(10) == 0
    proc = subprocess.Popen(
        _cli(settings, prism, "--events", "0", "--follow", "--set", "windows.allowed_lateness_seconds=0"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        metrics_topic = settings.topic("window_metrics")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and sum(end_offsets(settings, metrics_topic).values()) == 0:
            time.sleep(1)
        assert sum(end_offsets(settings, metrics_topic).values()) > 0, "no window fired while partitions 1-2 idle"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "stopping: cancelling the job" in output


def test_killed_runner_restarts_from_committed_offsets_without_loss(live_settings, prism):
    """(c) Prism SIGKILLed mid-stream (8000 records, still reading), started again: it resumes from committed offsets.

    Offsets are committed once a record's outputs are acknowledged by Kafka, so whatever Prism held in memory
    when it died is read again: nothing lost, duplicates bounded by the uncommitted tail.
    """
    settings = live_settings
    registry = registry_for(settings)
    topic = settings.kafka.input_topic
    outputs_before = {name: {} for name in settings.output_names()}
    records = publish_sample(settings, GeneratorConfig(seed=33, events=8000), registry)
    first = subprocess.Popen(
        _cli(settings, prism, "--events", "0"), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    end = end_offsets(settings, topic)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = sum(committed_offsets(settings, topic, list(end)).values())
        if done > 0:
            break
        time.sleep(0.2)
    prism.kill()
    first.communicate(timeout=60)
    committed_at_kill = sum(committed_offsets(settings, topic, list(end)).values())
    assert 0 < committed_at_kill < len(records), "kill came too late to test a restart"
    prism.start()
    second = subprocess.run(
        _cli(settings, prism, "--events", "0"), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert committed_offsets(settings, topic, list(end)) == end
    summary = summarize(settings, registry, {}, end, outputs_before, 1.0)
    rec = summary.reconciliation
    assert rec.ok, rec.line()
    assert rec.records_in == len(records) and not rec.lost
    # Duplicates come only from the uncommitted tail the first job had read when it was killed.
    assert sum(rec.duplicates.values()) <= len(records) - committed_at_kill, rec.line()
    print(rec.line())


def _bad_inputs(registry, topic: str, now: int) -> dict[str, tuple[bytes | None, bytes]]:
    """One Kafka record (value, key) per class of bad input, by the dead-letter code it must end with."""
    good = ConfluentAvroSerde(registry, schema_json("clickstream_event"), f"{topic}-value").encode(
        to_avro(make_event(event_id="framing-base", event_time=now))
    )
    fields = [{"name": "user_id", "type": "int"}]
    other = {"type": "record", "name": "ClickEvent", "namespace": "clickstream.events", "fields": fields}
    unresolvable = ConfluentAvroSerde(registry, other, f"{topic}-other-value").encode({"user_id": 5})
    teleport_schema = copy.deepcopy(schema_json("clickstream_event"))  # the catalogue caches its dicts
    next(f for f in teleport_schema["fields"] if f["name"] == "event_type")["type"]["symbols"].append("teleport")
    teleport = ConfluentAvroSerde(registry, teleport_schema, f"{topic}-teleport-value").encode(
        to_avro(make_event(event_id="teleport", event_type="teleport", event_time=now))
    )
    writer = ConfluentAvroSerde(registry, schema_json("clickstream_event"), f"{topic}-value")

    def event(**fields) -> bytes:
        return writer.encode(to_avro(make_event(**{"event_time": now, **fields})))

    key = b"u00001"
    return {
        "bad_magic_byte": (b"\x07" + good[1:], key),
        "truncated_record": (good[:12], key),
        "empty_value": (b"", key),
        "tombstone": (None, key),
        "unknown_schema_id": (b"\x00" + struct.pack(">I", 987_654) + good[5:], key),
        "schema_resolution_failed": (unresolvable, key),
        "malformed_avro": (good + b"\xff\xff", key),
        "oversize_record": (good + b"\x00" * (600 * 1024), key),
        "unknown_enum_symbol": (teleport, key),
        "invalid_key": (good, b"\xff\xfeu1"),
        "event_time_in_future": (event(event_id="future", event_time=now + 3_600_000), key),
        "event_time_too_old": (event(event_id="ancient", event_time=now - 30 * 86_400_000), key),
        "missing_field": (event(event_id="no-user", user_id=" "), key),
        "invalid_currency": (event(event_id="euro", currency="euro"), key),
        "invalid_country": (event(event_id="germany", country="Germany"), key),
        "duplicate_event_id": (event(event_id="good-0"), key),  # good-0 is produced first (same key: in order)
    }


def test_every_bad_input_class_ends_as_one_dead_letter_with_its_code_in_a_live_run(live_settings, prism):
    """Every class of bad record in one live run, between good ones: one dead letter each, with its code and a
    reason, the run finishes by itself (nothing stalls) and reconciles."""
    topic = live_settings.kafka.input_topic
    registry = registry_for(live_settings)
    now = int(time.time() * 1000)
    bad = _bad_inputs(registry, topic, now)
    writer = ConfluentAvroSerde(registry, schema_json("clickstream_event"), f"{topic}-value")
    good = [writer.encode(to_avro(make_event(event_id=f"good-{i}", event_time=now + i))) for i in range(len(bad))]
    producer = Producer({"bootstrap.servers": live_settings.kafka.bootstrap_servers, "message.max.bytes": 2 << 20})
    for i, (value, key) in enumerate(bad.values()):
        producer.produce(topic, value=good[i], key=b"u00001")
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0
    dead_before = end_offsets(live_settings, live_settings.topic("dead_letters"))
    said: list[str] = []
    code = run_live(live_settings, _args(prism), None, say=said.append)
    out = "\n".join(said)
    assert code == 0, out
    line = next(x for x in out.splitlines() if x.startswith("reconciliation:"))
    assert f"in {len(bad) * 2} = " in line and "-> OK; lost 0; duplicates 0" in line, line
    serde = ConfluentAvroSerde(registry, schema_json(output_contract("dead_letters", live_settings).contract))
    dead_topic = live_settings.topic("dead_letters")
    written = read_range(live_settings, dead_topic, dead_before, end_offsets(live_settings, dead_topic))
    rows = [serde.decode(m.value()) for m in written]
    print("\n".join(f"{r['stage']:>8} {r['error_code']:<26} {r['reason'][:90]}" for r in rows))
    assert sorted(r["error_code"] for r in rows) == sorted(bad), out
    assert all(r["reason"] and r["topic"] == topic and r["offset"] is not None for r in rows)
