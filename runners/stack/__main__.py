"""``python -m runners.stack up|down|status``: the local stack, each component a real process on loopback.

Exit codes: 0 when every component is healthy (or, for ``down``, stopped); 1 when ``up`` failed; 3 when
``status`` finds a component down.
"""

import argparse
import importlib
import sys

from beam_pipelines.settings import PipelineSettings, load_settings
from runners.stack.process import Component, StackError
from runners.stack.settings import StackSettings

#: Start order; ``down`` stops in reverse. Kafka (its topics) and the lag exporter (the group and topic it
#: watches) are built with the pipeline's settings, every other component as ``Cls(stack_settings)``.
KAFKA = "runners.stack.kafka:Kafka"
LAG_EXPORTER = "runners.stack.lag_exporter:LagExporter"
COMPONENTS = (
    KAFKA,
    "runners.stack.registry:SchemaRegistry",
    "runners.stack.postgres:Postgres",
    "runners.stack.redis:Redis",
    LAG_EXPORTER,
    "runners.stack.alertmanager:Alertmanager",
    "runners.stack.prometheus:Prometheus",
    "runners.prism:PrismJobServer",
)
#: Started only with ``--with-flink``: Beam cannot submit to it here (runners/FLINK.md), the pipeline runs on Prism.
FLINK = "runners.stack.flink:Flink"


def components(stack: StackSettings, pipeline: PipelineSettings, with_flink: bool = False) -> list[Component]:
    built = []
    for spec in (*COMPONENTS, FLINK) if with_flink else COMPONENTS:
        module, cls = spec.split(":")
        component = getattr(importlib.import_module(module), cls)
        built.append(component(stack, pipeline) if spec in (KAFKA, LAG_EXPORTER) else component(stack))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--config", help="pipeline settings YAML (topics to create)")
    parser.add_argument("--with-flink", action="store_true", help="also the Flink session cluster (off by default)")
    args = parser.parse_args(argv)
    stack = StackSettings.from_env()
    parts = components(stack, load_settings(args.config), args.with_flink or args.command == "down")
    try:
        if args.command == "up":
            for part in parts:
                part.install()
                part.start()
                print(f"{part.name:<16} up      {part.address}", flush=True)
        elif args.command == "down":
            for part in reversed(parts):
                part.stop()
                print(f"{part.name:<16} stopped", flush=True)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.command == "down":
        return 0
    unhealthy = 0
    for part in parts:
        health = part.health()
        unhealthy += not health.ok
        print(f"{part.name:<16} {'healthy' if health.ok else 'DOWN':<8}{part.address:<28}{health.detail}")
    if not unhealthy:
        return 0
    # LSB's "program is not running" for status, so scripts can tell; a failed start for up.
    return 3 if args.command == "status" else 1


if __name__ == "__main__":
    sys.exit(main())
