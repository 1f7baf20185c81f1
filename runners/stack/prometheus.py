"""Prometheus for the local stack: Debian's ``prometheus`` package, our own process with data under ``.stack/``.

Not the system service: ``install()`` only makes sure the binaries (``prometheus``, ``promtool``) exist;
``start()`` runs ``prometheus --config.file=... --storage.tsdb.path=.stack/<name>/data
--web.listen-address=127.0.0.1:<port>`` as a ``ManagedProcess``, so ``make down`` stops exactly this server.
The default configuration is ``monitoring/prometheus/prometheus.yml`` (with its alert rules); tests pass their
own. ``start()`` checks the configuration with ``promtool check config`` first, so a broken file fails with
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

from runners.stack.process import (
    REPO_ROOT,
    Health,
    ManagedProcess,
    StackError,
    install_debian_packages,
    require_free_port,
    stack_path,
    wait_until,
)
from runners.stack.settings import StackSettings
from schemas import endpoints

DEFAULT_CONFIG = REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml"
START_TIMEOUT_S = 60.0
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


class Prometheus:
    """The stack's Prometheus on loopback; scrapes what its config file lists and evaluates its rules."""

    def __init__(
        self,
        stack: StackSettings,
        *,
        name: str = "prometheus",
        port: int = endpoints.PROMETHEUS_PORT,
        config: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.config = Path(config or DEFAULT_CONFIG)
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
