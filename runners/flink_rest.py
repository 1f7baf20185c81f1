"""Flink's REST API for a job's life cycle: find jobs by name, stop with a savepoint, cancel.

Beam's FlinkRunner names the Flink job after ``--job_name``, so a template's job is found by name in
``/jobs/overview``. Replacing a job keeps its state by Flink's own sequence: ``POST /jobs/<id>/stop``
(stop-with-savepoint; ``drain`` first advances the watermark to the end so windows fire), poll
``/jobs/<id>/savepoints/<request>`` until the savepoint is written, then start the new job from that
location (Beam's ``--savepoint_path``).
"""

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

#: Flink job states after which the job will not run again.
FLINK_TERMINAL = frozenset({"FINISHED", "CANCELED", "FAILED", "SUSPENDED"})


class FlinkRestError(RuntimeError):
    """A REST call failed, the cluster did not answer, or a savepoint did not complete."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class FlinkJob:
    job_id: str
    name: str
    state: str

    @property
    def active(self) -> bool:
        return self.state not in FLINK_TERMINAL


class FlinkRest:
    """The REST API at ``base_url`` (``http://host:8081``); each call bounded by ``timeout`` seconds."""

    def __init__(self, base_url: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/") if "://" in base_url else f"http://{base_url.rstrip('/')}"
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One JSON call (``path`` like ``/jobs/overview``)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as err:
            raise FlinkRestError(f"Flink {method} {path} -> {err.code}: {err.read()[:2000]!r}") from None
        except TimeoutError:
            raise FlinkRestError(f"Flink {self.base_url} did not answer {method} {path} in time", True) from None
        except urllib.error.URLError as err:
            timed_out = isinstance(err.reason, TimeoutError)
            raise FlinkRestError(f"Flink {self.base_url} unreachable: {err.reason}", timed_out) from None
        return json.loads(payload) if payload else None

    def jobs(self) -> list[FlinkJob]:
        """Every job the cluster knows, oldest first."""
        listed = sorted(self.call("GET", "/jobs/overview")["jobs"], key=lambda job: job["start-time"])
        return [FlinkJob(job["jid"], job["name"], job["state"]) for job in listed]

    def by_name(self, name: str) -> list[FlinkJob]:
        return [job for job in self.jobs() if job.name == name]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> None:
        self.call("PATCH", f"/jobs/{job_id}?mode=cancel")

    def stop_with_savepoint(self, job_id: str, target_dir: str | None, drain: bool, timeout: float) -> str:
        """Stop ``job_id`` with a savepoint and return its location once written (the job is then FINISHED)."""
        body: dict[str, Any] = {"drain": drain}
        if target_dir:
            body["targetDirectory"] = target_dir
        request_id = self.call("POST", f"/jobs/{job_id}/stop", body)["request-id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("GET", f"/jobs/{job_id}/savepoints/{request_id}")
            if status["status"]["id"] == "COMPLETED":
                operation = status.get("operation") or {}
                if "location" in operation:
                    return operation["location"]
                cause = operation.get("failure-cause", {}).get("stack-trace", "no location")
                raise FlinkRestError(f"stop-with-savepoint of {job_id} failed: {cause[:2000]}")
            time.sleep(0.3)
        raise FlinkRestError(f"the savepoint of {job_id} was not written within {timeout:g}s", timed_out=True)

    def wait_for(self, job_id: str, states: frozenset[str], timeout: float) -> str:
        """Poll until the job is in one of ``states`` (or terminal); the last state seen when time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(job_id)["state"]
            if state in states or state in FLINK_TERMINAL or time.monotonic() >= deadline:
                return state
            time.sleep(0.3)
