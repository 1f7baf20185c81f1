"""Template launches on the live stack: the launcher CLI against Prism's job service, jobs in detached hosts.

One job's life cycle, as a scheduler drives it: two concurrent launches under one name (one job), status and
list JSON, records processed while the launcher is gone, ``--replace`` with a changed parameter (the new job
uses it; no input lost: reconciled by record id over both jobs), ``stop`` and a second ``stop``.
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from beam_pipelines.settings import PipelineSettings
from ingestion.generator import GeneratorConfig
from runners.live import committed_offsets, end_offsets, publish_sample, read_range, registry_for, summarize
from runners.prism import PrismJobServer
from schemas.catalog import schema_json
from schemas.serde import ConfluentAvroSerde

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def launcher(*args: str, timeout: float = 180) -> tuple[int, dict[str, Any], str]:
    """Run ``python -m runners.templates``; (exit code, the JSON on stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "runners.templates", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done.returncode, json.loads(lines[0]), done.stderr


def _config_file(settings: PipelineSettings, path: Path) -> Path:
    """The test stack's settings as the launcher's --config (the template's parameters apply on top)."""
    data = settings.model_dump(mode="json")
    data["stores"]["postgres_dsn"] = settings.stores.postgres_dsn.get_secret_value()
    path.write_text(yaml.safe_dump(data))
    return path


def _wait_committed(settings: PipelineSettings, end: dict[int, int], timeout: float) -> None:
    topic = settings.kafka.input_topic
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if committed_offsets(settings, topic, list(end)) == end:
            return
        time.sleep(0.5)
    raise AssertionError(f"committed {committed_offsets(settings, topic, list(end))} != end {end} in {timeout:.0f}s")


def _window_sizes(settings: PipelineSettings, registry: Any) -> set[int]:
    topic = settings.topic("window_metrics")
    serde = ConfluentAvroSerde(registry, schema_json("window_metric"))
    rows = [serde.decode(m.value()) for m in read_range(settings, topic, {}, end_offsets(settings, topic))]
    return {int((row["window_end"] - row["window_start"]).total_seconds()) for row in rows}


@pytest.fixture
def job(live_settings: PipelineSettings, prism: PrismJobServer, tmp_path: Path) -> Any:
    """Launcher arguments for this test's job on the test stack; the job is stopped at the end, whatever happened."""
    settings = live_settings
    name = f"it-{settings.kafka.consumer_group.removeprefix('it-').removesuffix('-pipeline')}"
    common = ["--job-name", name, "--set", f"runner.prism_job_endpoint={prism.endpoint}"]
    params = [
        "--config",
        str(_config_file(settings, tmp_path / "settings.yaml")),
        "--param",
        f"input_topic={settings.kafka.input_topic}",
        "--param",
        f"consumer_group={settings.kafka.consumer_group}",
        "--param",
        f"bootstrap_servers={settings.kafka.bootstrap_servers}",
    ]
    yield name, common, params
    launcher("stop", *common)


def test_launch_is_idempotent_replace_loses_nothing_and_stop_ends_the_job(live_settings, job):
    settings = live_settings
    registry = registry_for(settings)
    name, common, params = job
    launch = ["launch", "clickstream", *common, *params]

    # Two schedulers fire at once: one job.
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "runners.templates", *launch, "--param", "window_size_seconds=60"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    answers = []
    for racer in racers:
        out, err = racer.communicate(timeout=240)
        assert racer.returncode == 0, err[-3000:]
        answers.append(json.loads(out))
    assert sorted(a["action"] for a in answers) == ["existing", "launched"], answers
    assert answers[0]["job_id"] == answers[1]["job_id"]
    first_id = answers[0]["job_id"]
    assert all(a["state"] == "RUNNING" and a["parameters"]["window_size_seconds"] == 60 for a in answers)

    code, listed, _ = launcher("list", *common[2:])
    assert code == 0
    assert [j["job_id"] for j in listed["jobs"] if j["job_name"] == name] == [first_id]

    # The launchers are gone; the job runs on in its host process.
    first = publish_sample(settings, GeneratorConfig(seed=41, events=1500), registry)
    end = end_offsets(settings, settings.kafka.input_topic)
    _wait_committed(settings, end, 240)

    code, same_again, _ = launcher(*launch, "--param", "window_size_seconds=60")
    assert (code, same_again["action"], same_again["job_id"]) == (0, "existing", first_id)
    code, refused, _ = launcher(*launch, "--param", "window_size_seconds=20")
    assert code == 3 and "window_size_seconds" in refused["error"], refused

    code, replaced, _ = launcher(*launch, "--param", "window_size_seconds=20", "--replace")
    assert code == 0, replaced
    assert replaced["action"] == "replaced" and replaced["replaced_job_id"] == first_id
    assert replaced["replaced_state"] == "CANCELLED" and replaced["job_id"] != first_id
    second = publish_sample(settings, GeneratorConfig(seed=42, events=1500), registry)
    end = end_offsets(settings, settings.kafka.input_topic)
    _wait_committed(settings, end, 240)

    code, status, _ = launcher("status", *common)
    assert code == 0
    assert (status["job_id"], status["state"]) == (replaced["job_id"], "RUNNING")
    assert status["parameters"]["window_size_seconds"] == 20 and status["template"] == "clickstream"

    # Nothing lost across the replace: every record of both samples is routed, filtered or dead-lettered.
    outputs_before = {output: {} for output in settings.output_names()}
    rec = summarize(settings, registry, {}, end, outputs_before, 1.0).reconciliation
    assert rec.records_in == len(first) + len(second)
    assert rec.ok and not rec.lost, rec.line()
    # The new job's windows are 20 s long (the first job's, if any fired before it was cancelled, 60 s).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and 20 not in _window_sizes(settings, registry):
        time.sleep(1)
    sizes = _window_sizes(settings, registry)
    assert 20 in sizes and sizes <= {20, 60}, sizes

    code, missing, _ = launcher("launch", "clickstream", *common[:1], f"{name}-x", *common[2:], *params[:2],
                                "--param", "input_topic=it-no-such-topic", *params[4:])  # fmt: skip
    assert code == 3 and "it-no-such-topic" in missing["error"], missing

    code, stopped, _ = launcher("stop", *common)
    assert (code, stopped["action"], stopped["state"]) == (0, "cancel", "CANCELLED"), stopped
    code, again, _ = launcher("stop", *common)
    assert (code, again["action"]) == (0, "not_running")
    code, ended, _ = launcher("status", *common)
    assert (code, ended["state"]) == (3, "CANCELLED")
    print(rec.line())
