"""A client of Beam's Job API (the job service of Prism, or of Beam's Flink job server): list, state, cancel.

Beam's PortableRunner prepares every job under the name ``job``; the name a user gave is the pipeline
option ``job_name``, which the job service keeps with the job, as it keeps the template's labels
(``TemplateOptions``). So the job service itself is the record of what runs under which name and with
which parameters: nothing is kept on the launcher's disk.
"""

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc
from google.protobuf.json_format import MessageToDict

_STATE = beam_job_api_pb2.JobState
TERMINAL = frozenset({"DONE", "FAILED", "CANCELLED", "UPDATED", "DRAINED"})
#: States of a job that is on its way or running: a launch under the same name reports it instead.
ACTIVE = frozenset({"STOPPED", "STARTING", "RUNNING", "CANCELLING", "DRAINING", "RESUMING"})


class JobServiceError(RuntimeError):
    """The job service refused a call or cannot be reached (``timed_out`` when it did not answer in time)."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


class TemplateOptions(PipelineOptions):
    """Labels a launched job carries in its pipeline options, so ``status``/``list`` read them back."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument("--template_name", default=None, help="Template the job was launched from.")
        parser.add_argument("--template_version", default=None, help="Version of that template.")
        parser.add_argument("--template_parameters", default=None, help="The launch parameters, as JSON.")


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    job_name: str | None
    state: str
    template: str | None = None
    version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def _option(options: dict[str, Any], name: str) -> Any:
    return options.get(f"beam:option:{name}:v1")


def _job_info(info: Any) -> JobInfo:
    options = MessageToDict(info.pipeline_options)
    parameters = _option(options, "template_parameters")
    return JobInfo(
        job_id=info.job_id,
        job_name=_option(options, "job_name"),
        state=_STATE.Enum.Name(info.state),
        template=_option(options, "template_name"),
        version=_option(options, "template_version"),
        parameters=json.loads(parameters) if parameters else {},
    )


def _id_order(job_id: str) -> tuple:
    """Oldest first for ids like ``job-007`` (Prism) and plain strings alike."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", job_id))


class JobService:
    """One job service endpoint (``host:port``); every call is bounded by ``timeout`` seconds."""

    def __init__(self, endpoint: str, timeout: float = 10.0):
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = grpc.insecure_channel(endpoint)
        self._stub = beam_job_api_pb2_grpc.JobServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "JobService":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def wait_ready(self) -> None:
        """Raise JobServiceError unless the endpoint takes a connection within ``timeout``: refused (nothing
        listens) fails at once, an endpoint that never completes the handshake fails ``timed_out``."""
        deadline = time.monotonic() + self.timeout
        seen: list[grpc.ChannelConnectivity] = []
        self._channel.subscribe(seen.append, try_to_connect=True)
        try:
            while time.monotonic() < deadline:
                if grpc.ChannelConnectivity.READY in seen:
                    return
                if grpc.ChannelConnectivity.TRANSIENT_FAILURE in seen:
                    raise JobServiceError(f"job service {self.endpoint} is unreachable (connection refused or reset)")
                time.sleep(0.05)
        finally:
            self._channel.unsubscribe(seen.append)
        raise JobServiceError(f"job service {self.endpoint} did not answer within {self.timeout:g}s", timed_out=True)

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code = err.code()
            timed_out = code == grpc.StatusCode.DEADLINE_EXCEEDED
            raise JobServiceError(
                f"job service {self.endpoint}: {method} failed: {code.name} {err.details() or ''}".strip(),
                timed_out=timed_out,
            ) from None

    def jobs(self) -> list[JobInfo]:
        """Every job the service knows, oldest first."""
        found = [_job_info(info) for info in self._call("GetJobs", beam_job_api_pb2.GetJobsRequest()).job_info]
        return sorted(found, key=lambda job: _id_order(job.job_id))

    def by_name(self, job_name: str) -> list[JobInfo]:
        return [job for job in self.jobs() if job.job_name == job_name]

    def state(self, job_id: str) -> str:
        event = self._call("GetState", beam_job_api_pb2.GetJobStateRequest(job_id=job_id))
        return _STATE.Enum.Name(event.state)

    def cancel(self, job_id: str) -> str:
        return _STATE.Enum.Name(self._call("Cancel", beam_job_api_pb2.CancelJobRequest(job_id=job_id)).state)

    def wait_for(self, job_id: str, states: frozenset[str], timeout: float) -> str:
        """Poll until the job is in one of ``states`` (or terminal); the last state seen when time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(job_id)
            if state in states or state in TERMINAL or time.monotonic() >= deadline:
                return state
            time.sleep(0.2)
