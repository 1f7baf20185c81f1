"""Templates: a named, versioned pipeline with a typed parameter spec, turned into settings at launch.

A parameter spec is a pydantic model: every field has a type, a default, a help text and, where a string
must look a certain way, a regex (``pattern``) or a range. The same spec checks ``--param k=v`` at launch,
prints ``--help``, and generates the Dataflow Flex Template metadata, so the three never disagree.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, FilePath, ValidationError

from beam_pipelines.settings import PipelineSettings, SettingsError, load_settings
from schemas import endpoints

#: Kafka's legal topic and group names (letters, digits, '.', '_', '-'; at most 249 characters).
KAFKA_NAME = r"^[A-Za-z0-9._-]{1,249}$"
#: host:port[,host:port...]
BOOTSTRAP = r"^[A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*$"


class ParameterError(ValueError):
    """A template parameter is unknown, malformed or out of range; ``name`` says which."""

    def __init__(self, name: str, message: str):
        super().__init__(f"parameter {name}: {message}")
        self.name = name


class ClickstreamParameters(BaseModel):
    """What a scheduler may change per launch of the clickstream pipeline; the rest is its settings file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_topic: str = Field(endpoints.RAW_TOPIC, pattern=KAFKA_NAME, description="Kafka topic with raw events.")
    consumer_group: str = Field(
        endpoints.PIPELINE_GROUP,
        pattern=KAFKA_NAME,
        description="Consumer group whose committed offsets the job resumes from (keep it across --replace).",
    )
    bootstrap_servers: str = Field(endpoints.KAFKA_BOOTSTRAP, pattern=BOOTSTRAP, description="Kafka bootstrap servers.")
    window_size_seconds: int = Field(60, ge=1, le=86_400, description="Tumbling metrics window length (event time).")
    allowed_lateness_seconds: int = Field(
        300, ge=0, le=7 * 86_400, description="How long windows and sessions accept late events."
    )
    session_gap_seconds: int = Field(1800, ge=1, le=86_400, description="Inactivity that ends a user session.")
    routing_rules: FilePath | None = Field(
        None, description="YAML file with `routes:` (and optionally `default_route:`); default: the bundled rules."
    )
    parallelism: int = Field(2, ge=1, le=1024, description="Flink job parallelism.")
    checkpoint_interval_ms: int = Field(
        30_000, ge=1000, le=3_600_000, description="Flink checkpoint interval in milliseconds."
    )


def _routing_overrides(path: Path) -> list[str]:
    """``--set`` overrides replacing the routes with those of ``path`` (checked here, named by the parameter)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ParameterError("routing_rules", f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ParameterError("routing_rules", f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or "routes" not in data or set(data) - {"routes", "default_route"}:
        raise ParameterError("routing_rules", f"{path} must map `routes:` (and optionally `default_route:`)")
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}" for key, value in data.items()]


def clickstream_settings(params: ClickstreamParameters, config: Path | None) -> PipelineSettings:
    overrides = [
        f"kafka.input_topic={params.input_topic}",
        f"kafka.consumer_group={params.consumer_group}",
        f"kafka.bootstrap_servers={params.bootstrap_servers}",
        f"windows.size_seconds={params.window_size_seconds}",
        f"windows.allowed_lateness_seconds={params.allowed_lateness_seconds}",
        f"sessions.gap_seconds={params.session_gap_seconds}",
        f"sessions.allowed_lateness_seconds={params.allowed_lateness_seconds}",
    ]
    if params.routing_rules is not None:
        overrides += _routing_overrides(params.routing_rules)
    try:
        return load_settings(config, tuple(overrides))
    except SettingsError as err:
        raise ParameterError("routing_rules" if params.routing_rules else "(settings)", str(err)) from None


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    description: str
    parameters: type[BaseModel]
    #: parameters + the settings file -> the pipeline's settings
    settings: Callable[[Any, Path | None], PipelineSettings]
    #: parameters -> runner settings fields
    runner_fields: Callable[[Any], dict[str, Any]]
    streaming: bool = True

    def parse(self, pairs: list[str]) -> BaseModel:
        """``k=v`` strings -> the validated parameter model; ParameterError names the first bad one."""
        values: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ParameterError(pair or "(empty)", "expected name=value")
            if name not in self.parameters.model_fields:
                known = ", ".join(self.parameters.model_fields)
                raise ParameterError(name, f"unknown for template {self.name} (known: {known})")
            if name in values:
                raise ParameterError(name, "given twice")
            values[name] = value
        try:
            return self.parameters.model_validate(values)
        except ValidationError as err:
            first = err.errors()[0]
            name = ".".join(map(str, first["loc"])) or "(parameters)"
            raise ParameterError(name, f"{first['msg']} (got {first.get('input')!r})") from None

    def fields(self) -> dict[str, dict[str, Any]]:
        """Each parameter's JSON schema (type, default, description, pattern, minimum, maximum)."""
        return self.parameters.model_json_schema()["properties"]

    def help(self) -> str:
        lines = [f"{self.name} {self.version}: {self.description}", "parameters (--param name=value):"]
        for name, field in self.fields().items():
            rules = [f"{key} {field[key]}" for key in ("pattern", "minimum", "maximum") if key in field]
            extra = f" ({', '.join(rules)})" if rules else ""
            lines.append(f"  {name:<26} {field['description']}{extra} [default: {field.get('default')}]")
        return "\n".join(lines)


CLICKSTREAM = Template(
    name="clickstream",
    version="1.0.0",
    description="Raw click events from Kafka: validate, enrich, route to topics, windowed metrics and sessions.",
    parameters=ClickstreamParameters,
    settings=clickstream_settings,
    runner_fields=lambda p: {"parallelism": p.parallelism, "checkpointing_interval_ms": p.checkpoint_interval_ms},
)

TEMPLATES: dict[str, Template] = {t.name: t for t in (CLICKSTREAM,)}


def template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ParameterError("template", f"unknown template {name!r} (known: {', '.join(TEMPLATES)})") from None
