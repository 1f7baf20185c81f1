"""Templates: parameter validation, the launcher's exit codes on each failure path, and the Dataflow metadata."""

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from runners.templates.__main__ import build_parser, main
from runners.templates.dataflow import FlexTemplateMetadata, flex_template_metadata
from runners.templates.launch import JOB_NAME
from runners.templates.spec import CLICKSTREAM, ParameterError

EXAMPLES = Path(__file__).resolve().parents[2] / "runners" / "templates" / "examples"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return code, json.loads(out[0])


def test_parameters_take_their_types_and_defaults() -> None:
    params = CLICKSTREAM.parse(["window_size_seconds=30", "input_topic=clicks.raw"])
    assert (params.window_size_seconds, params.input_topic, params.allowed_lateness_seconds) == (30, "clicks.raw", 300)


@pytest.mark.parametrize(
    ("pair", "name", "message"),
    [
        ("window_size_seconds=0", "window_size_seconds", "greater than or equal to 1"),
        ("window_size_seconds=soon", "window_size_seconds", "valid integer"),
        ("input_topic=a b", "input_topic", "pattern"),
        ("bootstrap_servers=broker", "bootstrap_servers", "pattern"),
        ("routing_rules=/no/such/file.yaml", "routing_rules", "does not point to a file"),
        ("colour=blue", "colour", "unknown for template clickstream"),
        ("window_size_seconds", "window_size_seconds", "expected name=value"),
    ],
)
def test_a_bad_parameter_is_named(pair: str, name: str, message: str) -> None:
    with pytest.raises(ParameterError, match=message) as caught:
        CLICKSTREAM.parse([pair])
    assert caught.value.name == name


def test_a_parameter_given_twice_is_refused() -> None:
    with pytest.raises(ParameterError, match="given twice"):
        CLICKSTREAM.parse(["parallelism=2", "parallelism=3"])


def test_routing_rules_file_replaces_the_routes(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("routes:\n  - name: orders\n    event_types: [purchase]\ndefault_route: unrouted\n")
    settings = CLICKSTREAM.settings(CLICKSTREAM.parse([f"routing_rules={rules}"]), None)
    assert settings.route_names() == ["orders", "unrouted"]


def test_routing_rules_for_an_output_without_topic_name_the_parameter(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("routes:\n  - name: vip\n    min_amount_minor: 1\n")
    with pytest.raises(ParameterError, match="vip") as caught:
        CLICKSTREAM.settings(CLICKSTREAM.parse([f"routing_rules={rules}"]), None)
    assert caught.value.name == "routing_rules"


def test_bad_parameter_exits_2_naming_it(capsys: pytest.CaptureFixture) -> None:
    code, document = _run(capsys, "launch", "clickstream", "--job-name", "j1", "--param", "parallelism=0")
    assert code == 2 and document["parameter"] == "parallelism"


@pytest.mark.parametrize("name", ["Clicks", "-clicks", "clicks_prod", "x" * 64])
def test_bad_job_name_exits_2(capsys: pytest.CaptureFixture, name: str) -> None:
    code, document = _run(capsys, "launch", "clickstream", f"--job-name={name}")
    assert code == 2 and document["parameter"] == "--job-name"


def test_unknown_template_exits_2(capsys: pytest.CaptureFixture) -> None:
    code, document = _run(capsys, "launch", "orders", "--job-name", "j1")
    assert code == 2 and "unknown template 'orders'" in document["error"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """Accepts TCP connections and never says a word: a hung job service."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("command", [["launch", "clickstream", "--job-name", "j1"], ["status", "--job-name", "j1"]])
def test_unreachable_job_service_exits_3(capsys: pytest.CaptureFixture, command: list[str]) -> None:
    endpoint = f"127.0.0.1:{_closed_port()}"
    code, document = _run(capsys, *command, "--set", f"runner.prism_job_endpoint={endpoint}", "--timeout", "5")
    assert code == 3 and "unreachable" in document["error"] and endpoint in document["error"]


def test_silent_job_service_exits_4(capsys: pytest.CaptureFixture, silent_endpoint: str) -> None:
    code, document = _run(
        capsys, "launch", "clickstream", "--job-name", "j1", "--set", f"runner.prism_job_endpoint={silent_endpoint}",
        "--timeout", "2",
    )  # fmt: skip
    assert code == 4 and "did not answer within 2s" in document["error"]


def test_flink_without_its_job_server_exits_3_naming_the_jar(capsys, monkeypatch) -> None:
    """The preflight runs before any job is touched (a --replace must not stop the old job first)."""
    from runners import profiles

    monkeypatch.setattr(profiles, "_http_error", lambda url, method: "HTTP 404")
    monkeypatch.setattr(profiles, "_java_version_text", lambda java: 'openjdk version "17.0.9"')
    code, document = _run(capsys, "launch", "clickstream", "--runner", "flink", "--job-name", "j1", "--replace")
    assert code == 3 and "beam-runners-flink-1.20-job-server" in document["error"]


def test_dataflow_lifecycle_is_gcloud_s(capsys: pytest.CaptureFixture) -> None:
    code, document = _run(capsys, "list", "--runner", "dataflow")
    assert code == 3 and "gcloud dataflow jobs" in document["error"]


def test_flex_metadata_has_every_parameter_with_help_and_regexes() -> None:
    metadata = flex_template_metadata(CLICKSTREAM)
    FlexTemplateMetadata.model_validate(metadata)
    by_name = {p["name"]: p for p in metadata["parameters"]}
    assert list(by_name) == list(CLICKSTREAM.parameters.model_fields)
    assert metadata["streaming"] and metadata["defaultStreamingMode"] == "AT_LEAST_ONCE"
    defaults = CLICKSTREAM.parameters()
    for name, parameter in by_name.items():
        default = getattr(defaults, name)
        for regex in parameter["regexes"]:  # each default passes the regexes Dataflow will check
            assert default is None or re.match(regex, str(default)), (name, regex)
    assert by_name["window_size_seconds"]["regexes"] == ["^[0-9]+$"]
    assert "at least 1, at most 86400" in by_name["window_size_seconds"]["helpText"]
    assert by_name["routing_rules"]["paramType"] == "GCS_READ_FILE"


def test_flex_metadata_format_refuses_misspelt_fields() -> None:
    with pytest.raises(ValueError, match="helptext"):
        FlexTemplateMetadata.model_validate({"name": "x", "parameters": [{"name": "a", "label": "A", "helptext": "h"}]})


def test_committed_metadata_json_is_the_generated_one() -> None:
    committed = json.loads((EXAMPLES / "clickstream-metadata.json").read_text())
    assert committed == flex_template_metadata(CLICKSTREAM), "regenerate: python -m runners.templates flex-metadata"


def test_help_lists_the_commands_and_exit_codes() -> None:
    text = build_parser().format_help()
    for word in ("launch", "status", "list", "stop", "describe", "flex-metadata", "2 bad parameters", "4 timed out"):
        assert word in text


# --- the Kubernetes CronJob example, checked structurally (the fields used, with their types and rules) ------


class _Container(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=DNS_LABEL)
    image: str = Field(pattern=r"^[^\s:]+(:[\w.-]+)?$")
    command: list[str]
    args: list[str]
    resources: dict[str, dict[str, str]]


class _PodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    restartPolicy: Literal["Never", "OnFailure"]  # noqa: N815 (Kubernetes' field names)
    containers: list[_Container] = Field(min_length=1)


class _PodTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, dict[str, str]]
    spec: _PodSpec


class _JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backoffLimit: int = Field(ge=0)  # noqa: N815
    activeDeadlineSeconds: int = Field(gt=0)  # noqa: N815
    template: _PodTemplate


class _CronJobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schedule: str
    concurrencyPolicy: Literal["Forbid"]  # noqa: N815 (two launches of one job name must not overlap)
    startingDeadlineSeconds: int = Field(gt=0)  # noqa: N815
    successfulJobsHistoryLimit: int = Field(ge=0)  # noqa: N815
    failedJobsHistoryLimit: int = Field(ge=0)  # noqa: N815
    jobTemplate: dict[Literal["spec"], _JobSpec]  # noqa: N815


class _CronJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    apiVersion: Literal["batch/v1"]  # noqa: N815
    kind: Literal["CronJob"]
    metadata: dict[str, str | dict[str, str]]
    spec: _CronJobSpec


def test_cronjob_manifest_is_a_valid_cronjob_calling_the_launcher_with_valid_arguments() -> None:
    manifest = _CronJob.model_validate(yaml.safe_load((EXAMPLES / "clickstream-cronjob.yaml").read_text()))
    assert re.match(DNS_LABEL, manifest.metadata["name"])
    fields = manifest.spec.schedule.split()
    assert len(fields) == 5 and all(re.match(r"^(\*|\d+)([-/,]\d+)*(/\d+)?$|^\*/\d+$", f) for f in fields), fields
    container = manifest.spec.jobTemplate["spec"].template.spec.containers[0]
    assert container.command == ["python", "-m", "runners.templates"]
    args = build_parser().parse_args(container.args)
    assert args.command == "launch" and args.runner == "flink"
    CLICKSTREAM.parse([p.removeprefix("--param=") for p in container.args if p.startswith("--param=")])
    assert re.match(JOB_NAME, args.job_name)
