"""``python -m runners``: run the clickstream pipeline live, from Kafka to Kafka, on a runner profile.

Settings come from --config (YAML) with --set overrides; ``--set runner.<field>=<value>`` sets the
runner profile. Exit codes: 0 reconciled (or stopped cleanly when following), 1 failed or did not
reconcile, 2 bad settings or a runner that cannot start here (pre-flight).
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from pydantic import BaseModel, SecretStr

from beam_pipelines.settings import DEFAULT_CONFIG, SettingsError, load_settings
from ingestion.generator import GeneratorConfig
from runners.live import run_live
from runners.prism import PrismJobServer
from runners.profiles import PreflightError, RunnerSettings, pipeline_args, preflight, runner_settings
from runners.stack.postgres import postgres_dsn
from runners.stack.process import StackError
from runners.stack.prometheus import worker_metrics_env
from runners.stack.redis import redis_url
from runners.stack.settings import StackSettings
from transforms.route import RouteRule


def _help_value(value: object) -> str:
    """A setting's value as ``--help`` shows it: routes by name, secrets hidden, long values shortened."""
    if isinstance(value, tuple) and value and all(isinstance(v, RouteRule) for v in value):
        return ", ".join(v.name for v in value)
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, (dict, tuple, list)) and not value:
        return "none"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _settings_help(effective: BaseModel, prefix: str = "") -> list[str]:
    """One line per settings path with its description and effective default (the bundled config's value)."""
    lines = []
    for name, info in type(effective).model_fields.items():
        path = f"{prefix}{name}"
        value = getattr(effective, name)
        if isinstance(value, BaseModel):
            lines += _settings_help(value, f"{path}.")
            continue
        lines.append(f"  {path:<44} {info.description or ''} [default: {_help_value(value)}]")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runners",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings paths for --set (path=value, value parsed as YAML):\n"
        + "\n".join(_settings_help(load_settings()) + _settings_help(RunnerSettings(), "runner.")),
    )
    parser.add_argument("--runner", default="prism", help="direct | prism (default) | flink | dataflow")
    parser.add_argument("--config", type=Path, help=f"settings YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help="override one setting"
    )
    parser.add_argument(
        "--events", type=int, default=3000, help="publish a generated sample of this many records first (0: none)"
    )
    parser.add_argument("--seed", type=int, default=7, help="generator seed (same seed, same sample)")
    parser.add_argument(
        "--follow", action="store_true", help="keep consuming the input topic until SIGTERM/Ctrl-C (no reconciliation)"
    )
    parser.add_argument("--duration", type=float, help="stop the job after this many seconds")
    return parser


def _stack_endpoints(stack: StackSettings) -> tuple[str, ...]:
    """Overrides for the stack ports moved by STACK_* variables, so the pipeline uses the stack `make up` started
    there (before the user's own --set, which still win)."""
    moved = stack.model_fields_set
    pairs = {
        "kafka_port": f"kafka.bootstrap_servers={stack.kafka_bootstrap}",
        "registry_port": f"registry.url={stack.registry_url}",
        "postgres_port": f"stores.postgres_dsn={postgres_dsn(stack)}",
        "redis_port": f"stores.redis_url={redis_url(stack)}",
    }
    return tuple(override for field, override in pairs.items() if field in moved)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runner_overrides = [o for o in args.overrides if o.startswith("runner.")]
    stack = StackSettings.from_env()
    try:
        overrides = (*_stack_endpoints(stack), *(o for o in args.overrides if not o.startswith("runner.")))
        settings = load_settings(args.config, overrides)
        runner = runner_settings(args.runner, runner_overrides)
        if runner.runner == "direct":
            raise PreflightError(
                "the direct profile runs the DirectRunner unit tests (make test), not the live pipeline: "
                "it cannot read Kafka (an unbounded splittable DoFn) in streaming mode; use RUNNER=prism"
            )
        preflight(runner)
    except (SettingsError, PreflightError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if runner.runner == "prism" and runner.prism_job_endpoint is None:
        server = PrismJobServer(stack, binary=runner.prism_location)
        try:
            server.install()
            server.start()
        except StackError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        runner = runner.model_copy(update={"prism_job_endpoint": server.endpoint})
    if runner.environment_type == "LOOPBACK":  # the workers are this process: /metrics, found by the stack's Prometheus
        for name, value in worker_metrics_env(stack).items():
            os.environ.setdefault(name, value)
    generator = GeneratorConfig(seed=args.seed, events=args.events) if args.events > 0 else None
    return run_live(settings, pipeline_args(runner), generator, follow=args.follow, duration_seconds=args.duration)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
