"""Launch, inspect and stop template jobs on a runner; every answer is one JSON document and an exit code.

A launched job must outlive its launcher (a scheduler's task ends when the command returns). With the LOOPBACK
environment (the default on Prism) the launcher starts a detached host process (``host``) that submits the job
and stays its SDK worker until the job ends; the launcher returns once the job runs. With EXTERNAL (a Flink
cluster's worker pools) or PROCESS environments and on Dataflow the launcher submits the job itself.
Measured on Prism 2.76: with an EXTERNAL worker pool (Beam's ``worker_pool_main`` booting
``sdk_worker_main``) the pipeline's dead-letter branch never ran, so offsets stalled at the first dead letter;
LOOPBACK in a host process runs the same graph fully.

Launches are idempotent by job name: under a per-name lock, a job of that name that is still active is
reported instead of started again. The lock is a file lock on this machine; schedulers on several hosts
must serialise launches of one name themselves (a CronJob with ``concurrencyPolicy: Forbid``, one Airflow
pool slot), except on Dataflow, which itself refuses a second running job of a name.
"""

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult, PipelineState
from confluent_kafka import KafkaException
from pydantic import BaseModel

from beam_pipelines.settings import PipelineSettings
from runners.flink_rest import FLINK_TERMINAL, FlinkRest, FlinkRestError
from runners.live import ENDED_STATES, build_live_pipeline, end_offsets_of, export_worker_secrets, registry_for
from runners.prism import PrismJobServer
from runners.profiles import PreflightError, RunnerSettings, pipeline_args, preflight
from runners.stack.process import REPO_ROOT, ManagedProcess, stack_path
from runners.stack.prometheus import worker_metrics_env
from runners.stack.settings import StackSettings
from runners.templates.jobs import TERMINAL, JobService, JobServiceError
from runners.templates.spec import Template

_LOG = logging.getLogger(__name__)

OK, BAD_PARAMETERS, FAILED, TIMED_OUT = 0, 2, 3, 4
#: Job names every runner accepts (Dataflow's rule is the strictest).
JOB_NAME = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
STOP_MODES = ("cancel", "drain", "savepoint")


class Outcome(Exception):
    """The end of a command: ``code`` and the JSON ``document`` to print (raised to leave early, or returned)."""

    def __init__(self, code: int, document: dict[str, Any]):
        super().__init__(document.get("error", ""))
        self.code = code
        self.document = document


def failed(code: int, message: str, **fields: Any) -> Outcome:
    return Outcome(code, {"error": message, **fields})


@dataclass(frozen=True)
class Job:
    """A job as every command reports it."""

    job_id: str
    job_name: str
    runner: str
    state: str
    active: bool
    ui_url: str | None
    template: str | None = None
    version: str | None = None
    parameters: dict[str, Any] | None = None

    def document(self, **extra: Any) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if key != "active"} | extra


# --- runners: where jobs are listed, stopped and waited for ---------------------------------------------------


class PrismJobs:
    """Jobs on a Prism job service (Beam's Job API); Prism can cancel but not drain or savepoint."""

    name = "prism"

    def __init__(self, runner: RunnerSettings, stack: StackSettings, timeout: float):
        self._ui = PrismJobServer(stack)
        self.service = JobService(runner.prism_job_endpoint or self._ui.endpoint, timeout=min(timeout, 10.0))

    def check(self) -> None:
        try:
            self.service.wait_ready()
        except JobServiceError as err:
            raise failed(TIMED_OUT if err.timed_out else FAILED, f"{err} (start the stack: make up)") from None

    def close(self) -> None:
        """Close the channel before the interpreter exits (grpc can deadlock collecting it at shutdown)."""
        self.service.close()

    def jobs(self) -> list[Job]:
        """Parameters are those the job carries (None for jobs not launched from a template)."""
        return [
            Job(
                *(j.job_id, j.job_name or "", self.name, j.state, j.active, self._ui.ui_url(j.job_id)),
                *(j.template, j.version, j.parameters if j.template else None),
            )
            for j in self._call(self.service.jobs)
        ]

    def stop(self, job: Job, mode: str, timeout: float) -> dict[str, Any]:
        if mode != "cancel":
            raise failed(FAILED, f"Prism cannot {mode} a job, only cancel it (--mode cancel)", job_id=job.job_id)
        self._call(self.service.cancel, job.job_id)
        return {"state": self._call(self.service.wait_for, job.job_id, frozenset({"CANCELLED"}), timeout)}

    def wait_running(self, job_id: str, timeout: float) -> str:
        return self._call(self.service.wait_for, job_id, frozenset({"RUNNING"}), timeout)

    @staticmethod
    def _call(method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except JobServiceError as err:
            raise failed(TIMED_OUT if err.timed_out else FAILED, str(err)) from None


class FlinkJobs:
    """Jobs on a Flink cluster (its REST API); stop can cancel, drain or stop with a savepoint."""

    name = "flink"

    def __init__(self, runner: RunnerSettings, timeout: float):
        self.rest = FlinkRest(runner.flink_master, timeout=min(timeout, 10.0))

    def close(self) -> None:
        """Nothing held open between calls."""

    def check(self) -> None:
        self._call(self.rest.call, "GET", "/overview")

    def jobs(self) -> list[Job]:
        return [
            Job(
                j.job_id,
                j.name,
                self.name,
                j.state,
                j.active,
                f"{self.rest.base_url}/#/job/running/{j.job_id}/overview",
            )
            for j in self._call(self.rest.jobs)
        ]

    def stop(self, job: Job, mode: str, timeout: float) -> dict[str, Any]:
        if mode == "cancel":
            self._call(self.rest.cancel, job.job_id)
            return {"state": self._call(self.rest.wait_for, job.job_id, frozenset({"CANCELED"}), timeout)}
        location = self._call(self.rest.stop_with_savepoint, job.job_id, None, mode == "drain", timeout)
        return {"state": self._call(self.rest.wait_for, job.job_id, frozenset(), timeout), "savepoint": location}

    def wait_running(self, job_id: str, timeout: float) -> str:
        return self._call(self.rest.wait_for, job_id, frozenset({"RUNNING"}), timeout)

    @staticmethod
    def _call(method: Any, *args: Any) -> Any:
        try:
            return method(*args)
        except FlinkRestError as err:
            raise failed(TIMED_OUT if err.timed_out else FAILED, str(err)) from None


#: Running or succeeded (Beam's Job API and Flink's names); a launch waits for one of them.
#: Ended for good (Beam's Job API and Flink's names).
TERMINAL_STATES = TERMINAL | FLINK_TERMINAL
SUCCESS_STATES = frozenset({"RUNNING", "DONE", "FINISHED"})
#: On the way to running: ``status`` answers 0 for these too.
STARTING_STATES = frozenset({"STOPPED", "STARTING", "CREATED", "INITIALIZING", "RECONCILING"})


def jobs_of(runner: RunnerSettings, stack: StackSettings, timeout: float) -> PrismJobs | FlinkJobs:
    """The runner's job list; Dataflow's is Google's (``gcloud dataflow jobs list``), not reachable here."""
    if runner.runner == "prism":
        return PrismJobs(runner, stack, timeout)
    if runner.runner == "flink":
        return FlinkJobs(runner, timeout)
    raise failed(
        FAILED,
        f"runner {runner.runner}: job status, list and stop go through its own service "
        "(Dataflow: gcloud dataflow jobs list|describe|cancel|drain); this launcher only submits there",
    )


def active_named(runs: PrismJobs | FlinkJobs, job_name: str) -> Job | None:
    """The newest active job of that name, if any."""
    active = [job for job in runs.jobs() if job.job_name == job_name and job.active]
    return active[-1] if active else None


@contextlib.contextmanager
def name_lock(runner: str, job_name: str, timeout: float) -> Iterator[None]:
    """Only one launch/stop of a (runner, name) at a time on this machine."""
    path = stack_path("templates", f"{runner}-{job_name}.lock")
    deadline = time.monotonic() + timeout
    with open(path, "w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise failed(
                        TIMED_OUT, f"another launch of {job_name} held its lock {path} for {timeout:g}s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- launch ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchRequest:
    template: Template
    parameters: BaseModel
    job_name: str
    runner: RunnerSettings
    config: Path | None
    replace: bool
    timeout: float


def submit(request: LaunchRequest, runner: RunnerSettings) -> PipelineResult:
    """Build the template's pipeline and hand it to the runner; Beam returns once the job service took it."""
    settings = request.template.settings(request.parameters, request.config)
    export_worker_secrets(settings)  # LOOPBACK workers (this process) read credentials from the environment
    labels = [
        f"--template_name={request.template.name}",
        f"--template_version={request.template.version}",
        f"--template_parameters={request.parameters.model_dump_json()}",
    ]
    options = PipelineOptions([*pipeline_args(runner), *labels])  # labels: jobs.TemplateOptions
    return build_live_pipeline(settings, options, registry_for(settings), follow=request.template.streaming).run()


def host_process(runner: RunnerSettings, job_name: str) -> ManagedProcess:
    """The detached process a LOOPBACK job's Python runs in (``python -m runners.templates host``)."""
    return ManagedProcess(f"template-{runner.runner}-{job_name}")


def host_request(request: LaunchRequest, runner: RunnerSettings) -> str:
    """What ``host`` needs to build the same job, as one JSON argument."""
    return json.dumps(
        {
            "template": request.template.name,
            "parameters": json.loads(request.parameters.model_dump_json()),
            "job_name": request.job_name,
            "runner": runner.model_dump(mode="json"),
            "config": str(request.config) if request.config else None,
        }
    )


def _start(
    request: LaunchRequest, runner: RunnerSettings, runs: PrismJobs | FlinkJobs, stack: StackSettings, deadline: float
) -> Job:
    """Submit the job and return it as the runner lists it. LOOPBACK jobs are submitted by a detached host
    process that stays their SDK worker (the launcher exits, the job must not) and serves their /metrics for
    the stack's Prometheus; others are submitted here."""
    before = {job.job_id for job in runs.jobs()}
    hosted = runner.environment_type == "LOOPBACK"
    process = host_process(runner, request.job_name)
    if hosted:
        process.stop()  # a host whose job ended is on its way out; never two for one name
        metrics = {name: os.environ.get(name, value) for name, value in worker_metrics_env(stack).items()}
        command = [sys.executable, "-m", "runners.templates", "host", host_request(request, runner)]
        process.start(command, env=metrics, cwd=REPO_ROOT)
    else:
        try:
            submit(request, runner)
        except Exception as err:  # Beam raises many kinds; the scheduler needs exit 3 and the reason
            _LOG.exception("submitting %s failed", request.job_name)
            raise failed(FAILED, f"submitting the job failed: {type(err).__name__}: {err}") from None
    while True:
        started = [job for job in runs.jobs() if job.job_name == request.job_name and job.job_id not in before]
        if started:
            return started[-1]
        if hosted and not process.running():
            tail = process.log_file.read_text(errors="replace")[-3000:] if process.log_file.exists() else ""
            raise failed(FAILED, f"the job host exited before submitting (its log {process.log_file}):\n{tail}")
        if time.monotonic() >= deadline:
            raise failed(TIMED_OUT, f"job {request.job_name} was not submitted within {request.timeout:g}s")
        time.sleep(0.2)


def host(request: LaunchRequest, runner: RunnerSettings) -> int:
    """Run the job and be its SDK worker until it ends; SIGTERM cancels it. 0 unless the job failed."""
    result = submit(request, runner)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while result.state not in ENDED_STATES:
        if stop.wait(1.0):
            result.cancel()
            break
    try:
        state = result.wait_until_finish()
    except RuntimeError:  # the portable runner raises for CANCELLED and FAILED alike
        state = result.state
    _LOG.warning("job %s ended %s", request.job_name, state)
    return 1 if state == PipelineState.FAILED else 0


def launch(request: LaunchRequest, stack: StackSettings) -> Outcome:
    """Validate, then (under the name's lock) report the running job of that name, or replace it, or start one."""
    deadline = time.monotonic() + request.timeout
    runner = request.runner.model_copy(update={"job_name": request.job_name})
    settings = request.template.settings(request.parameters, request.config)  # before anything is touched
    try:
        preflight(runner)
    except PreflightError as err:
        raise failed(FAILED, str(err)) from None
    with contextlib.closing(jobs_of(runner, stack, request.timeout)) as runs:
        runs.check()
        _require_input_topic(settings)
        return _launch(request, runner, runs, stack, deadline)


def _require_input_topic(settings: PipelineSettings) -> None:
    """A job on a missing topic would wait for it forever, reporting RUNNING meanwhile: refuse to launch it."""
    try:
        end_offsets_of(settings, [settings.kafka.input_topic])
    except RuntimeError as err:  # names the topic and why
        raise failed(FAILED, str(err)) from None
    except KafkaException as err:
        raise failed(FAILED, f"cannot read input topic {settings.kafka.input_topic}: {err}") from None


def _launch(
    request: LaunchRequest, runner: RunnerSettings, runs: PrismJobs | FlinkJobs, stack: StackSettings, deadline: float
) -> Outcome:
    wanted = json.loads(request.parameters.model_dump_json())
    with name_lock(runner.runner, request.job_name, request.timeout):
        existing = active_named(runs, request.job_name)
        replaced: dict[str, Any] = {}
        if existing is not None and not request.replace:
            if existing.parameters is not None and existing.parameters != wanted:
                differ = sorted(k for k in wanted if existing.parameters.get(k) != wanted[k])
                raise failed(
                    FAILED,
                    f"job {request.job_name} runs with other parameters ({', '.join(differ)}): use --replace",
                    **existing.document(),
                )
            return Outcome(OK, existing.document(action="existing"))
        if existing is not None:
            # Prism: cancel, the new job resumes from the committed offsets. Flink: stop with a savepoint
            # (no drain: open windows and sessions stay in the state the new job starts from).
            mode = "savepoint" if runner.runner == "flink" else "cancel"
            stopped = runs.stop(existing, mode, max(deadline - time.monotonic(), 1.0))
            replaced = {"replaced_job_id": existing.job_id, "replaced_state": stopped["state"]}
            if "savepoint" in stopped:
                runner = runner.model_copy(update={"flink_savepoint_path": stopped["savepoint"]})
                replaced["savepoint"] = stopped["savepoint"]
        try:
            job = _start(request, runner, runs, stack, deadline)
        except Outcome as outcome:
            raise failed(outcome.code, outcome.document["error"], **replaced) from None
        state = runs.wait_running(job.job_id, max(deadline - time.monotonic(), 0.0))
        document = Job(**{**vars(job), "state": state}).document(
            action="replaced" if replaced else "launched", **replaced
        )
        if state in SUCCESS_STATES:
            return Outcome(OK, document)
        if state in STARTING_STATES:
            return Outcome(TIMED_OUT, {**document, "error": f"not RUNNING within {request.timeout:g}s (left {state})"})
        return Outcome(FAILED, {**document, "error": f"job {job.job_id} ended {state}"})


# --- status, list, stop ---------------------------------------------------------------------------------------


def status(runs: PrismJobs | FlinkJobs, job_name: str) -> Outcome:
    """The newest job of that name: 0 when it runs or succeeded, 3 when it failed, was stopped or is unknown."""
    runs.check()
    named = [job for job in runs.jobs() if job.job_name == job_name]
    if not named:
        raise failed(FAILED, f"no job named {job_name} on {runs.name}")
    job = active_named(runs, job_name) or named[-1]
    return Outcome(OK if job.state in SUCCESS_STATES | STARTING_STATES else FAILED, job.document())


def list_jobs(runs: PrismJobs | FlinkJobs, include_ended: bool) -> Outcome:
    runs.check()
    jobs = [job.document() for job in runs.jobs() if include_ended or job.active]
    return Outcome(OK, {"runner": runs.name, "jobs": jobs})


def stop(runs: PrismJobs | FlinkJobs, job_name: str, mode: str, timeout: float) -> Outcome:
    """Stop the active job of that name; stopping a name with no active job is a no-op (exit 0)."""
    runs.check()
    with name_lock(runs.name, job_name, timeout):
        job = active_named(runs, job_name)
        if job is None:
            return Outcome(OK, {"job_name": job_name, "runner": runs.name, "action": "not_running"})
        stopped = runs.stop(job, mode, timeout)
        document = Job(**{**vars(job), "state": stopped["state"]}).document(action=mode, **stopped)
        if stopped["state"] not in TERMINAL_STATES:
            return Outcome(TIMED_OUT, {**document, "error": f"still {stopped['state']} after {timeout:g}s"})
        return Outcome(OK, document)
