"""Runner profiles: flags parsed back through Beam's own option views, and preflight with monkeypatched probes."""

from pathlib import Path
from typing import get_args

import pytest
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    StandardOptions,
)
from apache_beam.transforms.external import JavaJarExpansionService
from pydantic import ValidationError

from runners import profiles
from runners.profiles import (
    PreflightError,
    RunnerSettings,
    expansion_service_url,
    flink_job_server_url,
    java_kafka_expansion_args,
    parse_runner,
    pipeline_args,
    preflight,
)

JAVA_17 = 'openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment (build 17.0.15+6-Debian-1deb12u1)\n'
JAVA_8 = 'java version "1.8.0_392"\nJava(TM) SE Runtime Environment (build 1.8.0_392-b08)\n'
FLINK_JAR = "beam-runners-flink-1.20-job-server-2.76.0.jar"
EXPANSION_JAR = "beam-sdks-java-io-expansion-service-2.76.0.jar"
DATAFLOW = {"runner": "dataflow", "project": "acme-data", "region": "europe-west1", "temp_location": "gs://acme/tmp"}


def options(settings: RunnerSettings, prism_binary: Path | None = None) -> PipelineOptions:
    return PipelineOptions(pipeline_args(settings, prism_binary))


def unknown_to_beam(args: list[str]) -> set[str]:
    """Flag names the installed Beam's option classes do not declare."""
    known = PipelineOptions(args).get_all_options()
    return {a.split("=", 1)[0].removeprefix("--") for a in args} - set(known)


class Probes:
    """A healthy machine: java 17, every file present, every URL answering; tests break one thing each."""

    def __init__(self) -> None:
        self.java: str | None = "/usr/bin/java"
        self.java_version = JAVA_17
        self.missing_files: set[Path] = set()
        self.url_errors: dict[str, str] = {}
        self.urls_probed: list[tuple[str, str]] = []
        self.dataflow_error: str | None = None

    def http_error(self, url: str, method: str) -> str | None:
        self.urls_probed.append((method, url))
        return next((err for part, err in self.url_errors.items() if part in url), None)


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Probes:
    state = Probes()
    monkeypatch.setattr(profiles, "_java_executable", lambda: state.java)
    monkeypatch.setattr(profiles, "_java_version_text", lambda java: state.java_version)
    monkeypatch.setattr(profiles, "_file_exists", lambda path: path not in state.missing_files)
    monkeypatch.setattr(profiles, "_http_error", state.http_error)
    monkeypatch.setattr(profiles, "_dataflow_import_error", lambda: state.dataflow_error)
    return state


def cached(jar_name: str) -> Path:
    return Path(profiles.JavaJarServer.JAR_CACHE) / jar_name


def preflight_message(settings: RunnerSettings) -> str:
    with pytest.raises(PreflightError) as err:
        preflight(settings)
    return str(err.value)


# --- option assembly ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [True, False])
def test_direct_is_the_bundle_based_runner(streaming: bool) -> None:
    opts = options(RunnerSettings(runner="direct", streaming=streaming))
    assert opts.view_as(StandardOptions).runner == "BundleBasedDirectRunner"
    assert opts.view_as(StandardOptions).streaming is streaming


def test_prism_uses_the_given_binary_before_the_configured_one() -> None:
    settings = RunnerSettings(runner="prism", prism_location=Path("/opt/prism-configured"))
    opts = options(settings, prism_binary=Path("/tmp/built/prism"))
    assert opts.view_as(StandardOptions).runner == "PrismRunner"
    assert opts.view_as(PrismRunnerOptions).prism_location == "/tmp/built/prism"
    assert opts.view_as(PortableOptions).environment_type == "LOOPBACK"
    assert opts.view_as(PortableOptions).environment_config is None
    assert opts.view_as(StandardOptions).streaming is True
    assert options(settings).view_as(PrismRunnerOptions).prism_location == "/opt/prism-configured"


def test_prism_without_a_binary_leaves_the_download_to_beam() -> None:
    args = pipeline_args(RunnerSettings(runner="prism"))
    assert not any(a.startswith("--prism_location") for a in args)
    assert PipelineOptions(args).view_as(PrismRunnerOptions).prism_location is None


def test_external_environment_passes_the_worker_pool_address() -> None:
    settings = RunnerSettings(runner="prism", environment_type="EXTERNAL", environment_config="localhost:50000")
    portable = options(settings).view_as(PortableOptions)
    assert (portable.environment_type, portable.environment_config) == ("EXTERNAL", "localhost:50000")


@pytest.mark.parametrize("environment_type", ["EXTERNAL", "PROCESS"])
def test_environments_that_need_a_config_reject_none(environment_type: str) -> None:
    with pytest.raises(ValidationError, match=f"environment_type {environment_type} needs environment_config"):
        RunnerSettings(environment_type=environment_type)


def test_settings_are_frozen_and_strict() -> None:
    with pytest.raises(ValidationError, match="flink_masterr"):
        RunnerSettings(flink_masterr="x:1")
    with pytest.raises(ValidationError):
        RunnerSettings(runner="spark")
    with pytest.raises(ValidationError):
        RunnerSettings(flink_version="1.17")
    with pytest.raises(ValidationError):
        RunnerSettings(checkpointing_interval_ms=999)
    with pytest.raises(ValidationError):
        RunnerSettings().runner = "flink"


def test_flink_versions_follow_the_installed_beam() -> None:
    assert list(get_args(profiles.FlinkVersion)) == FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS


def test_flink_flags_parse_through_beams_views() -> None:
    settings = RunnerSettings(
        runner="flink",
        flink_master="127.0.0.1:18081",
        flink_version="1.19",
        parallelism=4,
        checkpointing_interval_ms=30_000,
        flink_job_server_jar=Path("/jars/job-server.jar"),
    )
    args = pipeline_args(settings)
    opts = PipelineOptions(args)
    flink = opts.view_as(FlinkRunnerOptions)
    assert opts.view_as(StandardOptions).runner == "FlinkRunner"
    assert opts.view_as(StandardOptions).streaming is True
    assert (flink.flink_master, flink.flink_version, flink.parallelism) == ("127.0.0.1:18081", "1.19", 4)
    assert flink.flink_job_server_jar == "/jars/job-server.jar"
    assert opts.view_as(PortableOptions).environment_type == "LOOPBACK"
    # checkpointing_interval is Java's FlinkPipelineOptions.checkpointingInterval, which Beam's Python parser
    # only learns from the job server; it must still reach the job as a retained option.
    assert unknown_to_beam(args) == {"checkpointing_interval"}
    assert opts.get_all_options(retain_unknown_options=True)["checkpointing_interval"] == "30000"


def test_flink_without_a_jar_leaves_the_download_to_beam() -> None:
    args = pipeline_args(RunnerSettings(runner="flink"))
    assert PipelineOptions(args).view_as(FlinkRunnerOptions).flink_job_server_jar is None
    assert flink_job_server_url("1.20").endswith(
        f"/org/apache/beam/beam-runners-flink-1.20-job-server/2.76.0/{FLINK_JAR}"
    )


def test_dataflow_flags_parse_through_beams_views() -> None:
    args = pipeline_args(RunnerSettings(**DATAFLOW, job_name="clickstream-prod"))
    opts = PipelineOptions(args)
    gcp = opts.view_as(GoogleCloudOptions)
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    assert (gcp.project, gcp.region, gcp.temp_location, gcp.job_name) == (
        "acme-data",
        "europe-west1",
        "gs://acme/tmp",
        "clickstream-prod",
    )
    assert opts.view_as(StandardOptions).streaming is True
    assert unknown_to_beam(args) == set()


def test_dataflow_names_every_missing_field() -> None:
    with pytest.raises(PreflightError) as err:
        pipeline_args(RunnerSettings(runner="dataflow", region="europe-west1"))
    message = str(err.value)
    assert "runner.project" in message and "runner.temp_location" in message
    assert "runner.region" not in message


# --- RUNNER= ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["direct", "prism", "flink", "dataflow", " Flink "])
def test_parse_runner_accepts_the_four_profiles(name: str) -> None:
    assert parse_runner(name) == name.strip().lower()


def test_parse_runner_names_the_choices() -> None:
    with pytest.raises(PreflightError) as err:
        parse_runner("spark")
    assert str(err.value) == "unknown RUNNER='spark': choose one of direct, prism, flink, dataflow"


# --- preflight ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "major"),
    [(JAVA_17, 17), (JAVA_8, 8), ('openjdk version "21" 2023-09-19', 21), ('openjdk version "11.0.2"', 11)],
)
def test_java_major_reads_old_and_new_version_strings(text: str, major: int) -> None:
    assert profiles._java_major(text) == major


def test_flink_preflight_passes_on_a_healthy_machine(probes: Probes) -> None:
    preflight(RunnerSettings(runner="flink"))
    assert ("GET", "http://127.0.0.1:8081/overview") in probes.urls_probed


def test_flink_preflight_without_java(probes: Probes) -> None:
    probes.java = None
    message = preflight_message(RunnerSettings(runner="flink"))
    assert "java not found" in message and "JDK >= 11" in message and "Flink job server" in message


def test_flink_preflight_with_java_8(probes: Probes) -> None:
    probes.java_version = JAVA_8
    message = preflight_message(RunnerSettings(runner="flink"))
    assert "/usr/bin/java is Java 8" in message and "Java >= 11" in message


def test_flink_preflight_with_a_configured_jar_that_does_not_exist(probes: Probes) -> None:
    jar = Path("/nowhere/beam-runners-flink-1.20-job-server-2.76.0.jar")
    probes.missing_files.add(jar)
    message = preflight_message(RunnerSettings(runner="flink", flink_job_server_jar=jar))
    assert str(jar) in message and "runner.flink_job_server_jar" in message
    assert not any(method == "HEAD" for method, _ in probes.urls_probed)


def test_flink_preflight_when_the_jar_is_neither_cached_nor_downloadable(probes: Probes) -> None:
    probes.missing_files.add(cached(FLINK_JAR))
    probes.url_errors[FLINK_JAR] = "HTTP 404"
    message = preflight_message(RunnerSettings(runner="flink"))
    assert FLINK_JAR in message
    assert flink_job_server_url("1.20") in message and "HTTP 404" in message
    assert "runner.flink_job_server_jar=<path" in message and "Maven Central" in message
    # Beam retries Google's Maven mirror, so the preflight tries it too before giving up.
    assert [url for method, url in probes.urls_probed if method == "HEAD"] == [
        flink_job_server_url("1.20"),
        flink_job_server_url("1.20").replace(
            profiles.JavaJarServer.MAVEN_CENTRAL_REPOSITORY, profiles.JavaJarServer.GOOGLE_MAVEN_MIRROR
        ),
    ]


def test_flink_preflight_accepts_a_cached_jar_without_probing(probes: Probes) -> None:
    probes.url_errors[FLINK_JAR] = "HTTP 404"
    preflight(RunnerSettings(runner="flink"))
    assert not any(method == "HEAD" for method, _ in probes.urls_probed)


def test_flink_preflight_accepts_a_downloadable_jar(probes: Probes) -> None:
    probes.missing_files.add(cached(FLINK_JAR))
    preflight(RunnerSettings(runner="flink"))
    assert ("HEAD", flink_job_server_url("1.20")) in probes.urls_probed


def test_flink_preflight_when_the_rest_endpoint_does_not_answer(probes: Probes) -> None:
    probes.url_errors["/overview"] = "[Errno 111] Connection refused"
    message = preflight_message(RunnerSettings(runner="flink", flink_master="127.0.0.1:18081"))
    assert "http://127.0.0.1:18081/overview" in message and "Connection refused" in message


def test_flink_preflight_skips_the_rest_probe_for_an_embedded_cluster(probes: Probes) -> None:
    preflight(RunnerSettings(runner="flink", flink_master="[local]"))
    assert not any(method == "GET" for method, _ in probes.urls_probed)


def test_flink_preflight_lists_every_problem_at_once(probes: Probes) -> None:
    probes.java = None
    probes.url_errors["/overview"] = "timed out"
    message = preflight_message(RunnerSettings(runner="flink"))
    assert "java not found" in message and "/overview" in message


def test_java_kafka_on_flink_checks_the_expansion_jar(probes: Probes) -> None:
    jar = Path("/nowhere/expansion.jar")
    probes.missing_files.add(jar)
    message = preflight_message(RunnerSettings(runner="flink", kafka_io="java", expansion_service_jar=jar))
    assert str(jar) in message and "runner.expansion_service_jar" in message
    assert "EMBEDDED" in message and "never Docker" in message


def test_java_kafka_when_the_expansion_jar_cannot_be_downloaded(probes: Probes) -> None:
    probes.missing_files.add(cached(EXPANSION_JAR))
    probes.url_errors[EXPANSION_JAR] = "HTTP 404"
    message = preflight_message(RunnerSettings(runner="flink", kafka_io="java"))
    assert EXPANSION_JAR in message and expansion_service_url() in message
    assert "runner.expansion_service_jar=<path" in message
    assert FLINK_JAR not in message


def test_java_kafka_on_dataflow_needs_java(probes: Probes) -> None:
    probes.java = None
    message = preflight_message(RunnerSettings(**DATAFLOW, kafka_io="java"))
    assert "java not found" in message and "Java KafkaIO" in message
    assert "EMBEDDED" not in message


def test_native_kafka_on_dataflow_needs_no_java(probes: Probes) -> None:
    probes.java = None
    preflight(RunnerSettings(**DATAFLOW))


def test_dataflow_preflight_without_the_gcp_extra(probes: Probes) -> None:
    probes.dataflow_error = "No module named 'apitools'"
    message = preflight_message(RunnerSettings(**DATAFLOW))
    assert "apache-beam[gcp]" in message and "apitools" in message


def test_dataflow_preflight_names_missing_fields(probes: Probes) -> None:
    message = preflight_message(RunnerSettings(runner="dataflow", project="acme-data"))
    assert "runner.region" in message and "runner.temp_location" in message and "runner.project" not in message


@pytest.mark.parametrize("runner", ["direct", "prism"])
def test_local_runners_have_nothing_to_check(probes: Probes, runner: str) -> None:
    probes.java = None
    probes.url_errors[""] = "unreachable"
    preflight(RunnerSettings(runner=runner, kafka_io="java"))
    assert probes.urls_probed == []


# --- Java KafkaIO expansion ----------------------------------------------------------------------------------------


def expansion_service_of(settings: RunnerSettings) -> JavaJarExpansionService:
    kwargs = java_kafka_expansion_args(settings)
    assert set(kwargs) == {"expansion_service"}
    service = kwargs["expansion_service"]
    assert isinstance(service, JavaJarExpansionService)
    return service


def test_java_kafka_on_flink_runs_embedded_never_docker() -> None:
    jar = Path("/jars/expansion.jar")
    service = expansion_service_of(RunnerSettings(runner="flink", kafka_io="java", expansion_service_jar=jar))
    assert service.path_to_jar == str(jar)
    assert "--defaultEnvironmentType=EMBEDDED" in service._append_args
    # extra_args would replace Beam's own start-up arguments ({{PORT}}, --filesToStage).
    assert service._extra_args is None
    assert not any("DOCKER" in arg.upper() for arg in service._append_args)


def test_java_kafka_defaults_to_beams_expansion_jar() -> None:
    service = expansion_service_of(RunnerSettings(runner="flink", kafka_io="java"))
    assert service.path_to_jar == expansion_service_url()
    assert service.path_to_jar.endswith(EXPANSION_JAR)


def test_java_kafka_on_dataflow_keeps_the_workers_containers() -> None:
    service = expansion_service_of(RunnerSettings(**DATAFLOW, kafka_io="java"))
    assert service._append_args == []


def test_java_kafka_is_refused_on_local_runners() -> None:
    with pytest.raises(PreflightError, match="flink or dataflow"):
        java_kafka_expansion_args(RunnerSettings(runner="prism", kafka_io="java"))


def test_prism_patches_are_explained_and_a_changed_set_is_a_new_build():
    from runners.prism import BEAM_VERSION, prism_binary_path, prism_patches

    patches = prism_patches(BEAM_VERSION)
    assert patches, f"runners/prism_patches/{BEAM_VERSION}/ is empty: nothing to build Prism with"
    for patch in patches:
        header, _, diff = patch.read_text().partition("\n--- a/")
        assert len(header.split()) > 20 and diff, f"{patch.name}: a header saying why, then the diff"
    assert prism_binary_path(BEAM_VERSION).parent.name.startswith(f"{BEAM_VERSION}-patched-")
    assert prism_binary_path("0.0.0").parent.name == "0.0.0"  # no patches: the plain go install build
