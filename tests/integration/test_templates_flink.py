"""The launcher's Flink life cycle against the real local Flink cluster, with a plain Flink job.

A Beam job cannot run on this cluster here (Beam's Flink job server jar is refused by the registry), but
``--replace`` on Flink is Flink's own REST sequence: stop-with-savepoint, then start the new job from the
savepoint. The smoke job (a checkpointed sequence source, keyed counting) shows state carried over: the
restored job reads only the records the stopped one had not, and both together read every record once.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runners.stack.flink import SMOKE_JOB_CLASS, Flink, build_smoke_job

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RECORDS = 8000
NAME = "stack-smoke-job"


def launcher(flink: Flink, *args: str) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "runners.templates", *args, "--runner", "flink", "--set",
         f"runner.flink_master={flink.address}", "--timeout", "60"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done.returncode, json.loads(done.stdout)


def _source_reads(flink: Flink, job_id: str) -> int:
    vertices = flink.rest("GET", f"/jobs/{job_id}")["vertices"]
    return next(v["metrics"]["write-records"] for v in vertices if v["name"].startswith("Source: sequence"))


def _wait_state(flink: Flink, job_id: str, states: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (state := flink.rest("GET", f"/jobs/{job_id}")["state"]) not in states and time.monotonic() < deadline:
        time.sleep(0.3)
    return state


def test_stop_with_savepoint_and_restore_reads_every_record_once(flink_cluster: Flink) -> None:
    jar = build_smoke_job()
    first = flink_cluster.submit_jar(jar, SMOKE_JOB_CLASS, [str(RECORDS), "4"])
    try:
        assert _wait_state(flink_cluster, first, {"RUNNING"}, 30) == "RUNNING"
        code, listed = launcher(flink_cluster, "list")
        assert code == 0 and [j["job_id"] for j in listed["jobs"] if j["job_name"] == NAME] == [first]
        code, status = launcher(flink_cluster, "status", "--job-name", NAME)
        assert (code, status["job_id"], status["state"]) == (0, first, "RUNNING")
        time.sleep(3)  # let it read part of the sequence and checkpoint

        code, stopped = launcher(flink_cluster, "stop", "--job-name", NAME, "--mode", "savepoint")
        assert code == 0, stopped
        assert stopped["state"] == "FINISHED" and stopped["savepoint"].startswith("file:")
        assert (Path(stopped["savepoint"].removeprefix("file:")) / "_metadata").is_file()
        read_before = _source_reads(flink_cluster, first)
        assert 0 < read_before < RECORDS, read_before

        second = flink_cluster.submit_jar(
            jar, SMOKE_JOB_CLASS, [str(RECORDS), "4"], savepoint_path=stopped["savepoint"]
        )
        assert _wait_state(flink_cluster, second, {"FINISHED", "FAILED", "CANCELED"}, 90) == "FINISHED"
        assert _source_reads(flink_cluster, second) == RECORDS - read_before

        code, again = launcher(flink_cluster, "stop", "--job-name", NAME)
        assert (code, again["action"]) == (0, "not_running")
    finally:
        for job in flink_cluster.rest("GET", "/jobs/overview")["jobs"]:
            if job["state"] in ("RUNNING", "CREATED", "INITIALIZING"):
                flink_cluster.rest("PATCH", f"/jobs/{job['jid']}?mode=cancel")
