"""The README's ingestion and runner commands, run as written against the test stack (the ingestion CLI
reads the broker and registry from $KAFKA_BOOTSTRAP / $SCHEMA_REGISTRY_URL, as its --help says).

The runner command that runs the pipeline needs the default stack: ``test_make_run.py`` runs it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from schemas import endpoints
from tests.integration.conftest import KAFKA_STACK
from tests.readme import readme_commands

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
INGESTION = readme_commands("ingestion")
RUNNERS = readme_commands("runners")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory with the files the README's commands name (events.jsonl for replay)."""
    now = int(time.time() * 1000)
    lines = [
        {"event_id": f"readme-{i}", "event_type": "page_view", "user_id": f"u{i:05d}", "event_time": now - i * 1000}
        | {"device": "web", "country": "DE"}
        for i in range(20)
    ]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP": KAFKA_STACK.kafka_bootstrap,
        "SCHEMA_REGISTRY_URL": KAFKA_STACK.registry_url,
        "PYTHONPATH": str(REPO),
    }


def _pipeline_caught_up() -> None:
    """Commit the pipeline group at the raw topic's end, as a pipeline that keeps up would (the adaptive
    limiter then has no lag to slow down for)."""
    consumer = Consumer({"bootstrap.servers": KAFKA_STACK.kafka_bootstrap, "group.id": endpoints.PIPELINE_GROUP})
    try:
        partitions = consumer.list_topics(endpoints.RAW_TOPIC, timeout=10).topics[endpoints.RAW_TOPIC].partitions
        ends = [TopicPartition(endpoints.RAW_TOPIC, p) for p in partitions]
        for tp in ends:
            tp.offset = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.commit(offsets=ends, asynchronous=False)
    finally:
        consumer.close()


@pytest.mark.parametrize("argv", [a for a in INGESTION if "serve" not in a], ids=lambda a: " ".join(a)[:60])
def test_readme_ingestion_command_runs(argv, workdir, kafka_broker, schema_registry_service):
    if "--adaptive" in argv:
        _pipeline_caught_up()
    done = subprocess.run(
        [sys.executable, "-m", *argv], cwd=workdir, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_readme_serve_command_serves_and_stops_cleanly(workdir, kafka_broker, schema_registry_service):
    (argv,) = [a for a in INGESTION if "serve" in a]
    port = int(argv[argv.index("--port") + 1])
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=workdir, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("the README's serve command never answered /healthz")
        event = json.loads((workdir / "events.jsonl").read_text().splitlines()[0])
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/events", json=[event], timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        proc.send_signal(signal.SIGTERM)
        _, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors[-2000:]


@pytest.mark.parametrize("argv", [a for a in RUNNERS if "--events" not in a], ids=lambda a: " ".join(a)[:60])
def test_readme_runner_command_runs(argv):
    done = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    if "flink" in argv:  # Beam's Flink job server jar cannot be fetched here: pre-flight names it and exits 2
        assert done.returncode == 2, done.stdout + done.stderr
        assert "error:" in done.stderr and "flink" in done.stderr.lower(), done.stderr
    else:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
