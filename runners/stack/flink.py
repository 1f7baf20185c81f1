"""Apache Flink for the local stack: a standalone session cluster (one JobManager, one TaskManager).

The distribution is the pair of PyPI packages ``apache-flink`` (``pyflink/bin``, ``pyflink/conf``,
``pyflink/opt``, ``pyflink/plugins``) and ``apache-flink-libraries`` (``pyflink/lib`` with flink-dist),
installed with ``pip install --no-deps --target .stack/flink/dist`` (they pin an old apache-beam, so never into
the project venv). ``FLINK_HOME`` is ``.stack/flink/dist/pyflink``.

Each instance (``name``) writes its own ``config.yaml`` into ``.stack/<name>/conf`` and runs
``bin/jobmanager.sh start-foreground`` and ``bin/taskmanager.sh start-foreground`` (both ``exec`` java) as
``ManagedProcess``es. State: RocksDB with incremental checkpoints under ``.stack/<name>/checkpoints``, savepoints
under ``.stack/<name>/savepoints``. Metrics: Flink's Prometheus reporter, wrapped by a tiny reporter
(``runners/stack/flink-conf/prometheus-loopback``) that binds to 127.0.0.1 instead of the wildcard address;
the JobManager takes the first free port of the range, the TaskManager the next.
"""

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from runners.flink_rest import FlinkRest, FlinkRestError
from runners.stack.kafka import reap_if_exited
from runners.stack.process import (
    STACK_DIR,
    Health,
    ManagedProcess,
    StackError,
    port_open,
    require_free_port,
    stack_path,
)
from runners.stack.settings import StackSettings
from schemas import endpoints

#: Newest Flink minor that both Beam 2.76 (FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS) and this plan allow.
FLINK_VERSION = "1.20.3"
#: Shared by every instance (the stack's and the tests'): the distribution is installed once.
DIST_DIR = STACK_DIR / "flink" / "dist"
FLINK_HOME = DIST_DIR / "pyflink"
PLUGINS_DIR = STACK_DIR / "flink" / "plugins"
JOBS_DIR = STACK_DIR / "flink" / "jobs"
SOURCES = Path(__file__).resolve().parent / "flink-conf"
REPORTER_FACTORY = "org.apache.flink.metrics.prometheus.LoopbackPrometheusReporterFactory"
SMOKE_JOB_CLASS = "stack.SmokeJob"
START_TIMEOUT_S = 120.0
PIP_TIMEOUT_S = 1200.0
MVN_TIMEOUT_S = 600.0
_MARKER = ".installed"


def _run(argv: list[str], what: str, timeout: float, cwd: Path | None = None) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as err:
        raise StackError(f"flink: {what}: `{' '.join(argv)}` did not finish within {timeout:.0f}s") from err
    except OSError as err:
        raise StackError(f"flink: {what}: cannot run `{argv[0]}`: {err}") from err
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-3000:]
        raise StackError(f"flink: {what} failed (exit {done.returncode}).\ncommand: {' '.join(argv)}\n{output}")


def _sources_digest(*parts: str) -> str:
    digest = hashlib.sha256(FLINK_VERSION.encode())
    for part in parts:
        for path in sorted((SOURCES / part).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(SOURCES)).encode() + path.read_bytes())
    return digest.hexdigest()


def install_distribution(dist_dir: Path = DIST_DIR, version: str = FLINK_VERSION) -> bool:
    """pip-install apache-flink + apache-flink-libraries (``--no-deps``) into ``dist_dir`` unless present.

    Returns True when something was installed; a staging folder keeps an interrupted install from being used.
    """
    marker = dist_dir / _MARKER
    if marker.exists() and marker.read_text().strip() == version and (dist_dir / "pyflink" / "lib").is_dir():
        return False
    staging = dist_dir.with_name(dist_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    argv += ["--target", str(staging), f"apache-flink=={version}", f"apache-flink-libraries=={version}"]
    _run(argv, "installing the Flink distribution from PyPI", PIP_TIMEOUT_S)
    if not list((staging / "pyflink" / "lib").glob("flink-dist-*.jar")):
        raise StackError(f"flink: {staging}/pyflink/lib has no flink-dist jar after `{' '.join(argv)}`")
    shutil.rmtree(dist_dir, ignore_errors=True)
    staging.rename(dist_dir)
    (dist_dir / _MARKER).write_text(version + "\n")
    return True


def install_prometheus_plugin(plugins_dir: Path = PLUGINS_DIR, flink_home: Path = FLINK_HOME) -> bool:
    """Fill ``plugins_dir/metrics-prometheus`` with Flink's Prometheus reporter and our loopback wrapper.

    The reporter jar comes from the distribution's ``plugins/`` (the PyPI package ships it) or, failing that,
    from Maven Central (``org.apache.flink:flink-metrics-prometheus``); the wrapper is compiled with javac.
    """
    target = plugins_dir / "metrics-prometheus"
    digest = _sources_digest("prometheus-loopback")
    marker = target / _MARKER
    if marker.exists() and marker.read_text().strip() == digest:
        return False
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    jar_name = f"flink-metrics-prometheus-{FLINK_VERSION}.jar"
    shipped = flink_home / "plugins" / "metrics-prometheus" / jar_name
    if shipped.exists():
        shutil.copy2(shipped, staging / jar_name)
    else:
        artifact = f"org.apache.flink:flink-metrics-prometheus:{FLINK_VERSION}"
        argv = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={staging}"]
        _run(argv, f"downloading {artifact} from Maven Central", MVN_TIMEOUT_S)
    _build_jar(
        SOURCES / "prometheus-loopback",
        staging / "stack-prometheus-loopback.jar",
        [str(flink_home / "lib" / "*"), str(staging / jar_name)],
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    marker.write_text(digest + "\n")
    return True


def build_smoke_job(jobs_dir: Path = JOBS_DIR, flink_home: Path = FLINK_HOME) -> Path:
    """Compile the smoke job (``flink-conf/smoke-job``) into a jar; the distribution ships no example jar.

    Entry class ``stack.SmokeJob``, arguments ``[records, pause_ms]``: a throttled bounded sequence with keyed
    state and 1 s checkpoints, so a short run exercises RocksDB, checkpoints and per-operator metrics.
    """
    jar = jobs_dir / "stack-smoke-job.jar"
    digest = _sources_digest("smoke-job")
    marker = jobs_dir / ".smoke-job-sha256"
    if jar.exists() and marker.exists() and marker.read_text().strip() == digest:
        return jar
    jobs_dir.mkdir(parents=True, exist_ok=True)
    _build_jar(SOURCES / "smoke-job", jar, [str(flink_home / "lib" / "*")])
    marker.write_text(digest + "\n")
    return jar


def _build_jar(source_dir: Path, jar: Path, classpath: list[str]) -> None:
    if shutil.which("javac") is None or shutil.which("jar") is None:
        raise StackError("flink: javac and jar (a JDK 17) are needed to build the stack's small Flink jars")
    classes = jar.with_name(jar.stem + ".classes")
    shutil.rmtree(classes, ignore_errors=True)
    classes.mkdir(parents=True)
    java_files = [str(p) for p in sorted(source_dir.rglob("*.java"))]
    argv = ["javac", "-nowarn", "--release", "11", "-d", str(classes), "-cp", ":".join(classpath), *java_files]
    _run(argv, f"compiling {source_dir.name}", 300.0)
    for resource in source_dir.rglob("*"):
        if resource.is_file() and resource.suffix != ".java":
            dest = classes / resource.relative_to(source_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(resource, dest)
    jar.unlink(missing_ok=True)
    _run(["jar", "--create", "--file", str(jar), "-C", str(classes), "."], f"packaging {jar.name}", 120.0)
    shutil.rmtree(classes, ignore_errors=True)


def _java_opts_all(flink_home: Path) -> str:
    """``env.java.opts.all`` of the shipped config (the --add-opens list Flink needs on Java 17)."""
    lines = (flink_home / "conf" / "config.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if line.strip() == "opts:" and index + 1 < len(lines) and lines[index + 1].strip().startswith("all:"):
            return lines[index + 1].split("all:", 1)[1].strip()
    return ""


class Flink:
    """The stack's Flink session cluster; REST/UI on ``rest_port``, Prometheus on ``metrics_ports``."""

    def __init__(
        self,
        stack: StackSettings,
        *,
        name: str = "flink",
        rest_port: int = endpoints.FLINK_REST_PORT,
        rpc_port: int = 6123,
        metrics_ports: tuple[int, int] = (9250, 9260),
        task_slots: int = 2,
        jobmanager_memory: str = "1024m",
        taskmanager_memory: str = "1024m",
    ) -> None:
        self.name = name
        self._stack = stack
        self.rest_port = rest_port
        self.rpc_port = rpc_port
        self.metrics_ports = metrics_ports
        self.task_slots = task_slots
        self._jm_memory = jobmanager_memory
        self._tm_memory = taskmanager_memory
        self._jobmanager = ManagedProcess(f"{name}-jobmanager")
        self._taskmanager = ManagedProcess(f"{name}-taskmanager")
        self.dir = stack_path(name, "conf", "config.yaml").parents[1]

    @property
    def address(self) -> str:
        return self.rest_url

    @property
    def rest_url(self) -> str:
        return f"http://{self._stack.host}:{self.rest_port}"

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def savepoint_dir(self) -> Path:
        return self.dir / "savepoints"

    @property
    def pids(self) -> dict[str, int | None]:
        return {"jobmanager": self._jobmanager.pid(), "taskmanager": self._taskmanager.pid()}

    def install(self) -> None:
        """The Flink distribution (PyPI) and the Prometheus reporter plugin, each only if missing."""
        install_distribution()
        install_prometheus_plugin()

    def start(self) -> None:
        """Start the JobManager, then the TaskManager, unless ours run; wait until the slots are registered."""
        if not (FLINK_HOME / "lib").is_dir() or not (PLUGINS_DIR / "metrics-prometheus" / _MARKER).exists():
            raise StackError(f"{self.name}: Flink is not installed under {DIST_DIR}; run install() (`make up`)")
        if not self._jobmanager.running():
            for port in (self.rest_port, self.rpc_port):
                require_free_port(self._stack.host, port, self.name)
            self._write_config()
            self._jobmanager.start(["bash", str(FLINK_HOME / "bin" / "jobmanager.sh"), "start-foreground"], self._env())
        self._wait(lambda: self._overview() is not None, self._jobmanager, "the JobManager's REST API")
        if not self._taskmanager.running():
            self._taskmanager.start(
                ["bash", str(FLINK_HOME / "bin" / "taskmanager.sh"), "start-foreground"], self._env()
            )
        self._wait(lambda: self.health().ok, self._taskmanager, "the TaskManager's slots")

    def stop(self) -> None:
        """SIGTERM the TaskManager, then the JobManager (each SIGKILLed after 30 s)."""
        self._taskmanager.stop(timeout=30.0)
        self._jobmanager.stop(timeout=30.0)

    def health(self) -> Health:
        """Healthy when ``GET /overview`` shows at least one TaskManager and all its configured slots."""
        overview = self._overview()
        if overview is None:
            return Health(False, f"no REST answer on {self.rest_url}/overview")
        managers, total = overview.get("taskmanagers", 0), overview.get("slots-total", 0)
        detail = (
            f"Flink {overview.get('flink-version')}: {managers} TaskManager(s), "
            f"{overview.get('slots-available')}/{total} slot(s) free, {overview.get('jobs-running')} job(s) running"
        )
        return Health(managers >= 1 and total >= self.task_slots, detail)

    # -- REST helpers ----------------------------------------------------------------------------------------

    def rest(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
        """One JSON call to the REST API (``path`` like ``/jobs/overview``); raises StackError on HTTP errors."""
        try:
            return FlinkRest(self.rest_url, timeout).call(method, path, body)
        except FlinkRestError as err:
            raise StackError(f"{self.name}: {err}") from err

    def submit_jar(
        self,
        jar: Path,
        entry_class: str,
        args: list[str] | None = None,
        parallelism: int = 2,
        savepoint_path: str | None = None,
    ) -> str:
        """Upload ``jar`` (``POST /jars/upload``) and run it (``POST /jars/<id>/run``), from ``savepoint_path``
        if given (state restored, none of it dropped); returns the job id."""
        boundary = "----stack-flink-" + hashlib.sha256(jar.name.encode()).hexdigest()[:16]
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="jarfile"; filename="{jar.name}"\r\n'
            "Content-Type: application/x-java-archive\r\n\r\n"
        ).encode()
        body = head + jar.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.rest_url + "/jars/upload", data=body, method="POST")
        request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                uploaded = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise StackError(f"{self.name}: uploading {jar} failed: {err.code} {err.read()[:2000]!r}") from err
        jar_id = Path(uploaded["filename"]).name
        run = {"entryClass": entry_class, "programArgsList": list(args or []), "parallelism": parallelism}
        if savepoint_path:
            run |= {"savepointPath": savepoint_path, "allowNonRestoredState": False}
        return self.rest("POST", f"/jars/{jar_id}/run", run, timeout=120.0)["jobid"]

    def metrics_endpoints(self) -> list[str]:
        """The Prometheus endpoints (``http://127.0.0.1:<port>/metrics``) that answer in ``metrics_ports``."""
        low, high = self.metrics_ports
        return [
            f"http://{self._stack.host}:{port}/metrics"
            for port in range(low, high + 1)
            if port_open(self._stack.host, port, timeout=0.2)
        ]

    # -- internals -------------------------------------------------------------------------------------------

    def _overview(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.rest_url + "/overview", timeout=3) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def _env(self) -> dict[str, str]:
        return {
            "FLINK_CONF_DIR": str(self.dir / "conf"),
            "FLINK_PLUGINS_DIR": str(PLUGINS_DIR),
            "FLINK_LOG_DIR": str(self.dir / "log"),
            "FLINK_PID_DIR": str(self.dir / "run"),
            "FLINK_IDENT_STRING": self.name,
        }

    def _wait(self, check: Any, proc: ManagedProcess, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if check():
                return
            reap_if_exited(proc.pid())
            if not proc.running():
                tail = "\n".join(proc.log_file.read_text(errors="replace").splitlines()[-25:])
                raise StackError(f"{self.name}: {proc.name} exited during start-up:\n{tail}\n(logs: {self.dir}/log)")
            time.sleep(0.5)
        raise StackError(f"{self.name}: {what} not ready within {START_TIMEOUT_S:.0f}s; see {self.dir}/log")

    def _write_config(self) -> Path:
        conf = self.dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        for sub in ("log", "run", "tmp", "uploads", "checkpoints", "savepoints"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for shipped in (FLINK_HOME / "conf").iterdir():
            if shipped.name.startswith(("log4j", "logback")):
                shutil.copy2(shipped, conf / shipped.name)
        host = self._stack.host
        low, high = self.metrics_ports
        settings: dict[str, Any] = {
            "env.java.opts.all": _java_opts_all(FLINK_HOME),
            "jobmanager.rpc.address": host,
            "jobmanager.rpc.port": self.rpc_port,
            "jobmanager.bind-host": host,
            "jobmanager.memory.process.size": self._jm_memory,
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.host": host,
            "taskmanager.bind-host": host,
            "taskmanager.numberOfTaskSlots": self.task_slots,
            "taskmanager.memory.process.size": self._tm_memory,
            "parallelism.default": self.task_slots,
            "rest.address": host,
            "rest.bind-address": host,
            "rest.port": self.rest_port,
            "web.upload.dir": str(self.dir / "uploads"),
            "io.tmp.dirs": str(self.dir / "tmp"),
            "state.backend.type": "rocksdb",
            "execution.checkpointing.incremental": True,
            "execution.checkpointing.dir": (self.checkpoint_dir).as_uri(),
            "execution.checkpointing.savepoint-dir": (self.savepoint_dir).as_uri(),
            "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
            "metrics.reporter.prom.factory.class": REPORTER_FACTORY,
            "metrics.reporter.prom.host": host,
            "metrics.reporter.prom.port": f"{low}-{high}",
        }
        path = conf / "config.yaml"
        lines = ["# Written by runners/stack/flink.py on every start; edit the code, not this file."]
        lines += [f"{key}: {json.dumps(value)}" for key, value in settings.items()]
        path.write_text("\n".join(lines) + "\n")
        with contextlib.suppress(OSError):
            (conf / "masters").write_text(f"{host}:{self.rest_port}\n")
            (conf / "workers").write_text(f"{host}\n")
        return path
