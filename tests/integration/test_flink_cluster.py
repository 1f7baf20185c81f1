"""The local Flink session cluster: REST health, loopback-only sockets, a real job, checkpoints, Prometheus.

The smoke job (``runners/stack/flink-conf/smoke-job``) runs ~13 s: 6000 records throttled at 4 ms per record and
subtask, keyed counting in RocksDB state, 1 s checkpoints. While it runs we scrape both Prometheus endpoints for
the job metrics the pipeline's dashboards and alerts will use, and take a savepoint.
"""

import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runners.stack.flink import FLINK_VERSION, SMOKE_JOB_CLASS, Flink, build_smoke_job

pytestmark = pytest.mark.integration

RECORDS = 6000
JOB_NAME = "stack-smoke-job"
#: Metric names the pipeline's monitoring relies on; each must appear in a live scrape while the job runs.
JOB_METRICS = (
    "flink_jobmanager_job_lastCheckpointDuration",
    "flink_jobmanager_job_lastCheckpointSize",
    "flink_jobmanager_job_lastCheckpointFullSize",
    "flink_jobmanager_job_numberOfCompletedCheckpoints",
    "flink_jobmanager_job_numberOfFailedCheckpoints",
    "flink_jobmanager_job_numRestarts",
    "flink_taskmanager_job_task_busyTimeMsPerSecond",
    "flink_taskmanager_job_task_backPressuredTimeMsPerSecond",
    "flink_taskmanager_job_task_idleTimeMsPerSecond",
    "flink_taskmanager_job_task_operator_numRecordsIn",
    "flink_taskmanager_job_task_operator_numRecordsOut",
)


def scrape(flink: Flink) -> str:
    """All Prometheus endpoints of the cluster, concatenated."""
    return "".join(urllib.request.urlopen(url, timeout=5).read().decode() for url in flink.metrics_endpoints())


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen within {timeout:.0f}s")


@pytest.fixture(scope="module")
def running_job(flink_cluster: Flink) -> Iterator[str]:
    """The smoke job, submitted through the REST API; cancelled at the end if it still runs."""
    job_id = flink_cluster.submit_jar(build_smoke_job(), SMOKE_JOB_CLASS, [str(RECORDS), "4"])
    try:
        yield job_id
    finally:
        if flink_cluster.rest("GET", f"/jobs/{job_id}")["state"] not in ("FINISHED", "FAILED", "CANCELED"):
            flink_cluster.rest("PATCH", f"/jobs/{job_id}?mode=cancel")


def test_overview_reports_one_taskmanager_with_two_slots(flink_cluster: Flink) -> None:
    overview = flink_cluster.rest("GET", "/overview")
    assert overview["flink-version"] == FLINK_VERSION
    assert overview["taskmanagers"] == 1
    assert overview["slots-total"] == 2
    assert flink_cluster.health().ok


def test_configuration_uses_rocksdb_incremental_and_stack_dirs(flink_cluster: Flink) -> None:
    config = {entry["key"]: entry["value"] for entry in flink_cluster.rest("GET", "/jobmanager/config")}
    assert config["state.backend.type"] == "rocksdb"
    assert config["execution.checkpointing.incremental"] == "true"
    assert config["execution.checkpointing.dir"] == flink_cluster.checkpoint_dir.as_uri()
    assert config["execution.checkpointing.savepoint-dir"] == flink_cluster.savepoint_dir.as_uri()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to list listening sockets")
def test_every_listening_socket_is_on_loopback(flink_cluster: Flink) -> None:
    pids = {pid for pid in flink_cluster.pids.values() if pid}
    assert len(pids) == 2
    listing = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    ours = [line for line in listing.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    addresses = [line.split()[3] for line in ours]
    assert len(addresses) >= 4, listing  # REST, RPC and two Prometheus endpoints at least
    assert all(re.match(r"(\[::ffff:)?127\.0\.0\.1\]?:\d+$", address) for address in addresses), addresses
    ports = {int(address.rsplit(":", 1)[1]) for address in addresses}
    assert {flink_cluster.rest_port, flink_cluster.rpc_port} <= ports


def test_prometheus_serves_jobmanager_and_taskmanager_metrics(flink_cluster: Flink) -> None:
    endpoints = flink_cluster.metrics_endpoints()
    assert len(endpoints) == 2, endpoints
    text = scrape(flink_cluster)
    assert re.search(r"^flink_jobmanager_numRegisteredTaskManagers(\{[^}]*\})? 1\.0$", text, re.M)
    assert re.search(r"^flink_taskmanager_Status_JVM_Memory_Heap_Used\{", text, re.M)


def test_smoke_job_checkpoints_and_reports_job_metrics_while_running(flink_cluster: Flink, running_job: str) -> None:
    wait_for(lambda: flink_cluster.rest("GET", f"/jobs/{running_job}")["state"] == "RUNNING", 30, "job RUNNING")
    counts = wait_for(
        lambda: (c := flink_cluster.rest("GET", f"/jobs/{running_job}/checkpoints")["counts"])["completed"] >= 2 and c,
        30,
        "two completed checkpoints",
    )
    assert counts["completed"] >= 2
    job_dir = flink_cluster.checkpoint_dir / running_job
    assert list(job_dir.glob("chk-*/_metadata")), f"no completed checkpoint under {job_dir}"
    history = flink_cluster.rest("GET", f"/jobs/{running_job}/checkpoints")["history"]
    completed = [h for h in history if h["status"] == "COMPLETED"]
    # Incremental: a later checkpoint uploads less than the full state it references.
    assert any(h["checkpointed_size"] < h["state_size"] for h in completed), completed

    text = scrape(flink_cluster)
    missing = [name for name in JOB_METRICS if not re.search(rf'^{name}\{{[^}}]*job_id="{running_job}"', text, re.M)]
    assert not missing, f"not in the Prometheus scrape while {JOB_NAME} runs: {missing}"
    # The reporter rewrites label values: every character outside [A-Za-z0-9:_] becomes "_".
    assert f'job_name="{JOB_NAME.replace("-", "_")}"' in text
    duration = re.search(r"^flink_jobmanager_job_lastCheckpointDuration\{[^}]*\} (\S+)$", text, re.M)
    assert duration and float(duration.group(1)) >= 0


def test_savepoint_lands_in_the_stack_savepoint_dir(flink_cluster: Flink, running_job: str) -> None:
    if flink_cluster.rest("GET", f"/jobs/{running_job}")["state"] != "RUNNING":
        pytest.fail("the smoke job finished before the savepoint test; raise RECORDS or the pause")
    trigger = flink_cluster.rest("POST", f"/jobs/{running_job}/savepoints", {"cancel-job": False})["request-id"]
    status = wait_for(
        lambda: (
            (s := flink_cluster.rest("GET", f"/jobs/{running_job}/savepoints/{trigger}"))["status"]["id"] == "COMPLETED"
            and s
        ),
        30,
        "savepoint COMPLETED",
    )
    location = status["operation"].get("location")
    assert location, status
    assert Path(location.removeprefix("file:")).resolve().is_relative_to(flink_cluster.savepoint_dir.resolve())
    assert (Path(location.removeprefix("file:")) / "_metadata").is_file()


def test_smoke_job_finishes_with_every_record_counted(flink_cluster: Flink, running_job: str) -> None:
    details = wait_for(
        lambda: (d := flink_cluster.rest("GET", f"/jobs/{running_job}"))["state"] in ("FINISHED", "FAILED") and d,
        60,
        "job end",
    )
    assert details["state"] == "FINISHED"
    vertices = {vertex["name"]: vertex["metrics"] for vertex in details["vertices"]}
    source = next(metrics for name, metrics in vertices.items() if name.startswith("Source: sequence"))
    sink = next(metrics for name, metrics in vertices.items() if name.startswith("count-per-key"))
    assert source["write-records"] == RECORDS
    assert sink["read-records"] == RECORDS
    job = flink_cluster.rest("GET", "/jobs/overview")["jobs"]
    assert [j["state"] for j in job if j["jid"] == running_job] == ["FINISHED"]
