"""Runner profiles: typed settings -> Beam ``PipelineOptions`` arguments, plus a preflight per profile.

The pipeline code is the same on every runner; only these flags differ. ``preflight`` runs before any Beam code
so a missing JDK, jar or cluster fails in seconds with a message naming what is missing, instead of deep inside
Beam's job server or expansion service start-up.
"""

import importlib
import re
import shutil
import subprocess
from http.client import HTTPException
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import yaml
from apache_beam.runners.internal.names import BEAM_SDK_NAME
from apache_beam.transforms.external import JavaJarExpansionService
from apache_beam.utils.subprocess_server import JavaHelper, JavaJarServer
from apache_beam.version import __version__ as BEAM_VERSION
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from beam_pipelines.settings import SettingsError
from schemas import endpoints

RunnerName = Literal["direct", "prism", "flink", "dataflow"]
RUNNERS: tuple[str, ...] = get_args(RunnerName)

#: Beam 2.76's ``FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS`` (a unit test keeps the two in step).
FlinkVersion = Literal["1.19", "1.20", "2.0", "2.1", "2.2"]

MIN_JAVA_MAJOR = 11
PROBE_TIMEOUT_S = 5.0
#: Gradle target Beam resolves to ``beam-sdks-java-io-expansion-service-<beam>.jar`` (as apache_beam.io.kafka does).
IO_EXPANSION_TARGET = "sdks:java:io:expansion-service:shadowJar"
#: flink_master values with which Beam's job server runs Flink itself (no REST endpoint to probe).
_EMBEDDED_FLINK_MASTERS = ("[local]", "[auto]")
_USER_AGENT = f"{BEAM_SDK_NAME}/{BEAM_VERSION}"


class PreflightError(Exception):
    """A profile cannot start here; the message names what is missing and how to provide it."""


class RunnerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    runner: RunnerName = Field("prism", description="Beam runner profile: direct, prism, flink or dataflow.")
    streaming: bool = Field(True, description="Run in streaming mode (--streaming).")
    prism_location: Path | None = Field(
        None, description="Prism binary; None lets runners.prism.ensure_prism() build or find one."
    )
    prism_job_endpoint: str | None = Field(
        None,
        description="host:port of a running Prism job service (the stack's); None lets PrismRunner start its own.",
    )
    environment_type: Literal["LOOPBACK", "EXTERNAL", "PROCESS"] = Field(
        "LOOPBACK", description="Where Python user code runs on portable runners (never DOCKER: no Docker here)."
    )
    environment_config: str | None = Field(
        None, description="EXTERNAL: worker pool host:port; PROCESS: Beam's JSON with the boot command."
    )
    flink_master: str = Field(
        f"{endpoints.HOST}:{endpoints.FLINK_REST_PORT}", description="Flink REST address host:port (or [local]/[auto])."
    )
    flink_version: FlinkVersion = Field(
        "1.20", description="Flink minor version of the cluster; picks Beam's matching job server jar."
    )
    flink_job_server_jar: Path | None = Field(
        None, description="Beam Flink job server jar; None lets Beam download it from Maven Central."
    )
    parallelism: int = Field(2, ge=1, description="Flink job parallelism.")
    checkpointing_interval_ms: int = Field(30_000, ge=1000, description="Flink checkpoint interval in milliseconds.")
    kafka_io: Literal["native", "java"] = Field(
        "native", description="Kafka IO on flink/dataflow: native Python, or Beam's cross-language Java KafkaIO."
    )
    expansion_service_jar: Path | None = Field(
        None, description="Java KafkaIO: Beam IO expansion service jar; None lets Beam download it."
    )
    project: str | None = Field(None, description="Dataflow: Google Cloud project id.")
    region: str | None = Field(None, description="Dataflow: regional endpoint, e.g. europe-west1.")
    temp_location: str | None = Field(None, description="Dataflow: gs:// path for temporary files.")
    job_name: str | None = Field(
        None, description="Job name on every runner (Flink's job name; None lets Beam generate one)."
    )
    flink_savepoint_path: str | None = Field(
        None, description="Flink: start from this savepoint (state of the job it replaces)."
    )

    @model_validator(mode="after")
    def _environment_config_when_needed(self) -> "RunnerSettings":
        if self.environment_type in ("EXTERNAL", "PROCESS") and not self.environment_config:
            raise ValueError(f"environment_type {self.environment_type} needs environment_config")
        return self


def parse_runner(name: str) -> RunnerName:
    """Validate a ``RUNNER=`` value so a typo gets its own message rather than a pydantic dump."""
    runner = name.strip().lower()
    if runner not in RUNNERS:
        raise PreflightError(f"unknown RUNNER={name!r}: choose one of {', '.join(RUNNERS)}")
    return runner  # type: ignore[return-value]


def runner_settings(name: str, overrides: list[str]) -> RunnerSettings:
    """``RUNNER=`` plus ``runner.<field>=<yaml value>`` overrides -> validated settings (errors name the field)."""
    values: dict[str, Any] = {"runner": parse_runner(name)}
    for override in overrides:
        path, _, raw = override.partition("=")
        values[path.removeprefix("runner.")] = yaml.safe_load(raw)
    try:
        return RunnerSettings.model_validate(values)
    except ValidationError as err:
        details = "; ".join(f"runner.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise SettingsError(f"invalid runner settings: {details}") from None


def flink_job_server_url(flink_version: str) -> str:
    """The Maven Central URL Beam's FlinkRunner downloads its job server from when no jar is given."""
    return JavaJarServer.path_to_beam_jar(f":runners:flink:{flink_version}:job-server:shadowJar")


def expansion_service_url() -> str:
    """The Maven Central URL of the IO expansion service jar Beam's Python KafkaIO would download."""
    return JavaJarServer.path_to_beam_jar(IO_EXPANSION_TARGET)


def _missing_dataflow_fields(settings: RunnerSettings) -> list[str]:
    return [f"runner.{f}" for f in ("project", "region", "temp_location") if not getattr(settings, f)]


def _environment_args(settings: RunnerSettings) -> list[str]:
    args = [f"--environment_type={settings.environment_type}"]
    if settings.environment_config:
        args.append(f"--environment_config={settings.environment_config}")
    return args


def pipeline_args(settings: RunnerSettings, prism_binary: Path | None = None) -> list[str]:
    """Beam flags for the profile; the only place runner choice shows up in the pipeline's options."""
    if settings.runner == "direct":
        # The plain DirectRunner may hand the pipeline to Prism, which it downloads from GitHub.
        args = ["--runner=BundleBasedDirectRunner"]
    elif settings.runner == "prism" and settings.prism_job_endpoint:
        # Prism's job service speaks Beam's Job API: the portable runner submits to it.
        args = ["--runner=PortableRunner", f"--job_endpoint={settings.prism_job_endpoint}"]
        args += _environment_args(settings)
    elif settings.runner == "prism":
        args = ["--runner=PrismRunner"]
        binary = prism_binary or settings.prism_location
        if binary:  # without it Beam downloads its release binary (the fallback where Go is absent)
            args.append(f"--prism_location={binary}")
        args += _environment_args(settings)
    elif settings.runner == "flink":
        args = [
            "--runner=FlinkRunner",
            f"--flink_master={settings.flink_master}",
            f"--flink_version={settings.flink_version}",
            f"--parallelism={settings.parallelism}",
            # A Java FlinkPipelineOptions option: Beam's parser learns it from the job server at submission.
            f"--checkpointing_interval={settings.checkpointing_interval_ms}",
            *_environment_args(settings),
        ]
        if settings.flink_job_server_jar:
            args.append(f"--flink_job_server_jar={settings.flink_job_server_jar}")
        if settings.flink_savepoint_path:
            # FlinkPipelineOptions.savepointPath, learned from the job server like --checkpointing_interval.
            args.append(f"--savepoint_path={settings.flink_savepoint_path}")
    else:
        missing = _missing_dataflow_fields(settings)
        if missing:
            raise PreflightError(f"runner dataflow needs {', '.join(missing)} (set them with --set <field>=<value>)")
        args = [
            "--runner=DataflowRunner",
            f"--project={settings.project}",
            f"--region={settings.region}",
            f"--temp_location={settings.temp_location}",
        ]
    if settings.job_name:
        args.append(f"--job_name={settings.job_name}")
    if settings.streaming:
        args.append("--streaming")
    return args


def java_kafka_expansion_args(settings: RunnerSettings) -> dict[str, Any]:
    """kwargs for ``apache_beam.io.kafka.ReadFromKafka``/``WriteToKafka`` on the java KafkaIO path.

    The expansion service gives Java transforms a DOCKER environment by default and there is no Docker here,
    so on Flink the transforms run EMBEDDED in Flink's JVM. Dataflow keeps Beam's default: its workers run the
    Java SDK container themselves. ``append_args`` keeps Beam's own start-up arguments (port, files to stage).
    """
    if settings.runner not in ("flink", "dataflow"):
        raise PreflightError(f"Java KafkaIO runs on flink or dataflow, not on runner {settings.runner}")
    jar = str(settings.expansion_service_jar) if settings.expansion_service_jar else expansion_service_url()
    append_args = ["--defaultEnvironmentType=EMBEDDED"] if settings.runner == "flink" else []
    return {"expansion_service": JavaJarExpansionService(jar, append_args=append_args)}


# --- probes: each touches the outside world once, so unit tests monkeypatch them -----------------------------


def _java_executable() -> str | None:
    """The java Beam will start (``$JAVA_HOME/bin/java`` or ``java`` on PATH), if it exists."""
    return shutil.which(JavaHelper.get_java())


def _java_version_text(java: str) -> str:
    """``java -version`` output (the JVM prints it to stderr)."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return done.stderr or done.stdout


def _file_exists(path: Path) -> bool:
    return path.is_file()


def _http_error(url: str, method: str) -> str | None:
    """None when ``url`` answers 2xx within the probe timeout, else why not."""
    try:
        with urlopen(Request(url, method=method, headers={"User-Agent": _USER_AGENT}), timeout=PROBE_TIMEOUT_S):
            return None
    except HTTPError as err:
        return f"HTTP {err.code}"
    except URLError as err:
        return str(err.reason)
    except (OSError, ValueError, HTTPException) as err:
        return str(err) or type(err).__name__


def _dataflow_import_error() -> str | None:
    """Beam's own test for the [gcp] extra: DataflowRunner imports this module before submitting."""
    try:
        importlib.import_module("apache_beam.runners.dataflow.internal.apiclient")
    except ImportError as err:
        return str(err)
    return None


# --- checks ----------------------------------------------------------------------------------------------------


def _java_major(version_text: str) -> int | None:
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0_392" is Java 8


def _java_problem(needed_for: str) -> str | None:
    java = _java_executable()
    if java is None:
        wanted = JavaHelper.get_java()
        where = "`java` on PATH" if wanted == "java" else f"{wanted} from JAVA_HOME"
        return (
            f"java not found ({where}); {needed_for} needs a JDK >= {MIN_JAVA_MAJOR}: "
            "install one and put it on PATH or set JAVA_HOME"
        )
    text = _java_version_text(java)
    major = _java_major(text)
    if major is None:
        return f"cannot read the Java version from `{java} -version`: {text.strip()[:200]!r}"
    if major < MIN_JAVA_MAJOR:
        return (
            f"{java} is Java {major}; {needed_for} needs Java >= {MIN_JAVA_MAJOR}: "
            "put a newer JDK first on PATH or set JAVA_HOME"
        )
    return None


def _jar_problem(what: str, configured: Path | None, url: str, field: str) -> str | None:
    """A jar Beam needs: the configured path, else Beam's cache, else a download Beam would manage."""
    setting = f"runner.{field}"
    if configured is not None:
        if _file_exists(configured):
            return None
        return f"{what} {configured} ({setting}) does not exist: set {setting}=<path to the jar>"
    name = url.rsplit("/", 1)[-1]
    cached = Path(JavaJarServer.JAR_CACHE) / name
    if _file_exists(cached):
        return None
    tried = [url]
    if url.startswith(JavaJarServer.MAVEN_CENTRAL_REPOSITORY):  # Beam falls back to Google's mirror
        tried.append(url.replace(JavaJarServer.MAVEN_CENTRAL_REPOSITORY, JavaJarServer.GOOGLE_MAVEN_MIRROR))
    failures = []
    for candidate in tried:
        error = _http_error(candidate, "HEAD")
        if error is None:
            return None
        failures.append(f"{candidate} ({error})")
    return (
        f"{what} {name} is not in Beam's jar cache {cached.parent} and cannot be downloaded; tried "
        f"{'; '.join(failures)}. Set {setting}=<path to {name}> (or copy it to {cached}), "
        "or run where Maven Central serves Beam's runner jars"
    )


def _flink_rest_problem(flink_master: str) -> str | None:
    if flink_master in _EMBEDDED_FLINK_MASTERS:
        return None
    base = flink_master if re.match(r"https?://", flink_master) else f"http://{flink_master}"
    url = f"{base.rstrip('/')}/overview"
    error = _http_error(url, "GET")
    if error is None:
        return None
    return (
        f"Flink REST endpoint {url} did not answer ({error}; timeout {PROBE_TIMEOUT_S:g} s): start the cluster "
        "(`make up`) or set runner.flink_master=<host:port>"
    )


def preflight(settings: RunnerSettings) -> None:
    """Fail fast, before any Beam code runs, listing everything the profile is missing on this machine."""
    java_kafka = settings.runner in ("flink", "dataflow") and settings.kafka_io == "java"
    java_users = []
    if settings.runner == "flink":
        java_users.append("Beam's Flink job server")
    if java_kafka:
        java_users.append("Beam's Java KafkaIO (kafka_io=java)")
    problems = [_java_problem(" and ".join(java_users))] if java_users else []
    if settings.runner == "flink":
        server_url = flink_job_server_url(settings.flink_version)
        problems.append(
            _jar_problem("Flink job server jar", settings.flink_job_server_jar, server_url, "flink_job_server_jar")
        )
        problems.append(_flink_rest_problem(settings.flink_master))
    elif settings.runner == "dataflow":
        import_error = _dataflow_import_error()
        if import_error:
            problems.append(f"DataflowRunner is not importable ({import_error}): pip install 'apache-beam[gcp]'")
        missing = _missing_dataflow_fields(settings)
        if missing:
            problems.append(f"runner dataflow needs {', '.join(missing)}")
    if java_kafka:
        problems.append(
            _jar_problem(
                "IO expansion service jar",
                settings.expansion_service_jar,
                expansion_service_url(),
                "expansion_service_jar",
            )
        )
    found = [p for p in problems if p]
    if found and java_kafka and settings.runner == "flink":
        found.append(
            "Java KafkaIO must run here with an EMBEDDED Java environment (never Docker): build ReadFromKafka/"
            "WriteToKafka with runners.profiles.java_kafka_expansion_args(settings)"
        )
    if found:
        raise PreflightError(f"runner {settings.runner} cannot start:\n" + "\n".join(f"  - {p}" for p in found))
