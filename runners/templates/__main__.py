"""``python -m runners.templates``: launch pipeline templates from schedulers, and follow their jobs.

  launch TEMPLATE --runner R --job-name N [--param k=v ...] [--replace]   start (or report) job N
  status --runner R --job-name N                                          the newest job named N
  list   --runner R [--all]                                               active jobs (--all: ended too)
  stop   --runner R --job-name N [--mode cancel|drain|savepoint]          stop job N (no job: no-op)
  describe TEMPLATE                                                       the template's parameters
  flex-metadata TEMPLATE [--output F]                                     Dataflow Flex Template metadata.json

stdout carries exactly one JSON object (describe: text); logs go to stderr. Exit codes: 0 running or
succeeded (stop: stopped, or nothing to stop), 2 bad parameters, 3 launch failed (or the job failed, its
input topic is missing, or status finds no such job), 4 timed out (job service silent, job not RUNNING in
time, stop not finished).
Runner settings (`--set runner.<field>=<value>`, as for `python -m runners`) pick the job service:
Prism's of `make up` by default, `runner.flink_master` for Flink. A LOOPBACK job (the default) runs in a
detached host process the launcher starts, which lives as long as the job; `stop` ends both.
"""

import argparse
import contextlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from beam_pipelines.settings import SettingsError
from runners.profiles import RUNNERS, RunnerSettings, runner_settings
from runners.stack.settings import StackSettings
from runners.templates.dataflow import flex_template_metadata
from runners.templates.launch import (
    BAD_PARAMETERS,
    JOB_NAME,
    OK,
    STOP_MODES,
    LaunchRequest,
    Outcome,
    host,
    jobs_of,
    launch,
    list_jobs,
    status,
    stop,
)
from runners.templates.spec import TEMPLATES, ParameterError, template

DEFAULT_TIMEOUT_S = 120.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runners.templates", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def job_command(name: str, help_text: str, named: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--runner", default="prism", help=f"{' | '.join(RUNNERS)} (default prism)")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="runner.FIELD=VALUE", help="runner setting"
        )
        sub.add_argument(
            "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help=f"seconds (default {DEFAULT_TIMEOUT_S:g})"
        )
        if named:
            sub.add_argument("--job-name", required=True, help=f"job name ({JOB_NAME}); the key of idempotency")
        return sub

    run = job_command("launch", "start a job from a template, or report the running job of that name")
    run.add_argument("template", help=f"one of: {', '.join(TEMPLATES)}")
    run.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="template parameter")
    run.add_argument("--config", type=Path, help="pipeline settings YAML the parameters apply to")
    run.add_argument("--replace", action="store_true", help="stop the running job of that name and start this one")
    job_command("status", "the newest job of that name")
    job_command("list", "jobs on the runner", named=False).add_argument(
        "--all", action="store_true", help="ended jobs too"
    )
    stop_parser = job_command("stop", "stop the active job of that name")
    stop_parser.add_argument("--mode", choices=STOP_MODES, default="cancel", help="cancel (default), drain, savepoint")
    commands.add_parser("describe", help="the template's parameters").add_argument("template")
    commands.add_parser("host", help="(internal) run a LOOPBACK job as its SDK worker").add_argument("request")
    flex = commands.add_parser("flex-metadata", help="Dataflow Flex Template metadata.json from the template")
    flex.add_argument("template")
    flex.add_argument("--output", type=Path, help="write here instead of stdout")
    return parser


def _runner(args: argparse.Namespace, stack: StackSettings, fields: dict[str, Any] | None = None) -> RunnerSettings:
    """Runner settings from ``--runner``/``--set``; on Prism the job service of ``make up`` unless set."""
    overrides = list(args.overrides)
    if not any(o.startswith("runner.prism_job_endpoint=") for o in overrides):
        overrides.insert(0, f"runner.prism_job_endpoint={stack.host}:{stack.prism_port}")
    unknown = [o for o in overrides if not o.startswith("runner.")]
    if unknown:
        raise ParameterError("--set", f"only runner.<field>=<value> here (template parameters: --param): {unknown}")
    return runner_settings(args.runner, overrides).model_copy(update=fields or {})


def _host(document: str) -> int:
    """The ``host`` command the launcher starts for a LOOPBACK job (not for users)."""
    data = json.loads(document)
    spec = template(data["template"])
    request = LaunchRequest(
        spec, spec.parameters.model_validate(data["parameters"]), data["job_name"],
        RunnerSettings.model_validate(data["runner"]), Path(data["config"]) if data["config"] else None, False, 0.0,
    )  # fmt: skip
    return host(request, request.runner)


def run(args: argparse.Namespace, stack: StackSettings) -> Outcome:
    if args.command == "host":
        raise SystemExit(_host(args.request))
    if args.command == "describe":
        print(template(args.template).help())
        return Outcome(OK, {})
    if args.command == "flex-metadata":
        text = json.dumps(flex_template_metadata(template(args.template)), indent=2) + "\n"
        if args.output:
            args.output.write_text(text)
            return Outcome(OK, {"written": str(args.output)})
        sys.stdout.write(text)
        return Outcome(OK, {})
    if getattr(args, "job_name", None) is not None and not re.match(JOB_NAME, args.job_name):
        raise ParameterError("--job-name", f"{args.job_name!r} must match {JOB_NAME}")
    if args.command == "launch":
        spec = template(args.template)
        parameters = spec.parse(args.param)
        request = LaunchRequest(
            spec, parameters, args.job_name, _runner(args, stack, spec.runner_fields(parameters)), args.config,
            args.replace, args.timeout,
        )  # fmt: skip
        return launch(request, stack)
    with contextlib.closing(jobs_of(_runner(args, stack), stack, args.timeout)) as runs:
        if args.command == "status":
            return status(runs, args.job_name)
        if args.command == "list":
            return list_jobs(runs, args.all)
        return stop(runs, args.job_name, args.mode, args.timeout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        outcome = run(args, StackSettings.from_env())
    except (ParameterError, SettingsError) as err:
        outcome = Outcome(BAD_PARAMETERS, {"error": str(err), "parameter": getattr(err, "name", None)})
    except Outcome as raised:
        outcome = raised
    if outcome.document:
        print(json.dumps(outcome.document, sort_keys=True))
    if "error" in outcome.document:
        print(f"error: {outcome.document['error']}", file=sys.stderr)
    return outcome.code


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
