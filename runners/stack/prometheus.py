"""Prometheus for the local stack: Debian's ``prometheus`` package, our own process with data under ``.stack/``.

Not the system service: ``install()`` only makes sure the binaries (``prometheus``, ``promtool``) exist;
``start()`` runs ``prometheus --config.file=... --storage.tsdb.path=.stack/<name>/data
--web.listen-address=127.0.0.1:<port>`` as a ``ManagedProcess``, so ``make down`` stops exactly this server.
The default configuration is rendered from ``StackSettings`` by ``render_config`` (every port from one model)
into ``.stack/<name>/prometheus.yml``, with the alert rules of ``monitoring/prometheus/rules/``; tests pass their
own. What is not at a fixed address is discovered from files (``file_sd_configs``) under
``.stack/<name>/targets/<job>/``: pipeline workers write theirs (``telemetry.endpoint``), and so does an
ingestion service started with ``--prometheus-targets``, so a process that is not running is not a target.
``start()`` checks the configuration with ``promtool check config`` first, so a broken file fails with
promtool's message instead of a process that exits.
"""

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from runners.stack.process import (
    REPO_ROOT,
    STACK_DIR,
    Health,
    ManagedProcess,
    StackError,
    install_debian_packages,
    require_free_port,
    stack_path,
    wait_until,
)
from runners.stack.settings import StackSettings
from telemetry import endpoint

RULES = REPO_ROOT / "monitoring" / "prometheus" / "rules" / "*.yml"
START_TIMEOUT_S = 60.0
#: Jobs whose targets are discovered from files: job -> the subdirectory of ``targets_dir()`` they read.
DISCOVERED_JOBS = {"pipeline-workers": "workers", "ingestion": "ingestion"}
#: Loopback traffic never goes through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _binary(name: str) -> str | None:
    return shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)


def install_prometheus(component: str = "prometheus") -> None:
    """Debian's ``prometheus`` (server and promtool) unless both are present; the system service stays stopped."""
    install_debian_packages(
        component, ["prometheus"], lambda: _binary("prometheus") is not None and _binary("promtool") is not None
    )


def promtool(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``promtool`` (installing it if missing); the caller checks ``returncode``."""
    install_prometheus()
    return subprocess.run([_binary("promtool"), *args], capture_output=True, text=True, timeout=timeout)


def amtool(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``amtool`` from Debian's ``prometheus-alertmanager`` (installed if missing; its service stays stopped)."""
    install_debian_packages("alertmanager", ["prometheus-alertmanager"], lambda: _binary("amtool") is not None)
    return subprocess.run([_binary("amtool"), *args], capture_output=True, text=True, timeout=timeout)


def targets_dir(name: str = "prometheus") -> Path:
    """Where Prometheus ``name`` reads its file-discovered targets (one subdirectory per job)."""
    return STACK_DIR / name / "targets"


def worker_metrics_env(stack: StackSettings, name: str = "prometheus") -> dict[str, str]:
    """The environment that makes pipeline workers serve /metrics and register with Prometheus ``name``."""
    return {
        endpoint.HOST_ENV: stack.host,
        endpoint.PORT_ENV: str(stack.worker_metrics_port),
        endpoint.TARGETS_ENV: str(targets_dir(name) / DISCOVERED_JOBS["pipeline-workers"]),
    }


def render_config(
    stack: StackSettings,
    *,
    targets: Path,
    rules: tuple[str, ...] = (str(RULES),),
    interval: str = "5s",
    alertmanager: bool = True,
) -> dict[str, Any]:
    """The scrape and alerting configuration of a Prometheus on ``stack``'s ports.

    Static targets are the processes ``make up`` starts (Prometheus itself, Alertmanager, the lag exporter);
    pipeline workers and the ingestion service are discovered from ``targets/<job>/*.json``. Workers are
    scraped every 2 s: a ``make run`` lasts seconds, and its workers exit with it.
    """
    host = stack.host

    def static(job: str, port: int) -> dict[str, Any]:
        return {"job_name": job, "static_configs": [{"targets": [f"{host}:{port}"]}]}

    jobs = [static("prometheus", stack.prometheus_port), static("lag-exporter", stack.lag_exporter_port)]
    if alertmanager:
        jobs.append(static("alertmanager", stack.alertmanager_port))
    for job, directory in DISCOVERED_JOBS.items():
        jobs.append(
            {
                "job_name": job,
                **({"scrape_interval": "2s", "scrape_timeout": "2s"} if job == "pipeline-workers" else {}),
                "file_sd_configs": [{"files": [str(targets / directory / "*.json")], "refresh_interval": "5s"}],
            }
        )
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": list(rules),
        "scrape_configs": jobs,
    }
    if alertmanager:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [f"{host}:{stack.alertmanager_port}"]}]}]
        }
    return config


class Prometheus:
    """The stack's Prometheus on loopback; scrapes what its config file lists and evaluates its rules."""

    def __init__(
        self,
        stack: StackSettings,
        *,
        name: str = "prometheus",
        port: int | None = None,
        config: Path | None = None,
    ) -> None:
        self.name = name
        self.port = stack.prometheus_port if port is None else port
        self._stack = stack
        self._rendered = config is None
        self.config = Path(config) if config else stack_path(name, "prometheus.yml")
        self._host = stack.host
        self._proc = ManagedProcess(name)
        self.data_dir = stack_path(name, "data", ".keep").parent

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid()

    def install(self) -> None:
        """Debian's prometheus package if missing (about 10 s with apt's cache warm)."""
        install_prometheus(self.name)
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Check the config with promtool, start unless ours already runs, wait for /-/ready."""
        if not self._proc.running():
            binary = _binary("prometheus")
            if binary is None:
                raise StackError(f"{self.name}: prometheus is not installed; run install() (`make up`) first")
            if self._rendered:
                targets = targets_dir(self.name)
                for directory in DISCOVERED_JOBS.values():
                    (targets / directory).mkdir(parents=True, exist_ok=True)
                    endpoint.prune_targets(targets / directory)
                self.config.write_text(yaml.safe_dump(render_config(self._stack, targets=targets), sort_keys=False))
            checked = promtool("check", "config", str(self.config))
            if checked.returncode != 0:
                raise StackError(f"{self.name}: {self.config} is invalid: {(checked.stdout + checked.stderr).strip()}")
            require_free_port(self._host, self.port, self.name)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv = [
                binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.data_dir}",
                "--storage.tsdb.retention.time=2d",
                f"--web.listen-address={self.address}",
                "--web.enable-lifecycle",  # POST /-/reload picks up edited rules without a restart
            ]
            self._proc.start(argv, cwd=self.data_dir)
        wait_until(self._ready, START_TIMEOUT_S, f"{self.name} on {self.address}", self._proc.log_file)

    def stop(self) -> None:
        """SIGTERM (Prometheus flushes its head block and exits) to the server we started."""
        self._proc.stop()

    def health(self) -> Health:
        try:
            build = self.api("status/buildinfo")
            targets = self.api("targets", state="active")["activeTargets"]
        except StackError as err:
            running = "running" if self._proc.running() else "not running"
            return Health(False, f"{running}; {err}")
        up = sum(t["health"] == "up" for t in targets)
        return Health(True, f"Prometheus {build['version']}, {up}/{len(targets)} targets up")

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; raises ``StackError`` unless status is success."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with _OPENER.open(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise StackError(f"{self.name}: GET /api/v1/{path} failed: {err}") from err
        if body.get("status") != "success":
            raise StackError(f"{self.name}: /api/v1/{path}: {body.get('error', body)}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``[{"metric": {...}, "value": [ts, "v"]}, ...]``)."""
        return self.api("query", query=promql)["result"]

    def _ready(self) -> bool:
        if not self._proc.running():
            raise StackError(f"{self.name} exited during start-up; see {self._proc.log_file}")
        try:
            with _OPENER.open(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False
