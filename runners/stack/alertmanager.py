"""Alertmanager for the local stack: Debian's ``prometheus-alertmanager``, our own process with data under ``.stack/``.

It runs the repository's routing tree (``monitoring/alertmanager/alertmanager.yml``: routes, grouping,
inhibition) unchanged; only the receivers are local: each becomes a webhook to
``http://<host>:<alert_webhook_port>/<receiver name>``, so whoever listens there (the team's relay, or a
test) sees which route an alert took. PagerDuty's routing key and the real webhook belong to a deployment,
never to this machine. ``timings`` shortens ``group_wait``/``group_interval``/``repeat_interval`` for tests.
"""

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

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
from runners.stack.prometheus import _binary, amtool
from runners.stack.settings import StackSettings

ROUTING = REPO_ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def render_config(webhook_base: str, timings: dict[str, str] | None = None, routing: Path = ROUTING) -> dict[str, Any]:
    """The repository's routing with every receiver a webhook to ``<webhook_base>/<receiver name>``."""
    config = yaml.safe_load(routing.read_text())
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": f"{webhook_base}/{r['name']}", "send_resolved": True}]}
        for r in config["receivers"]
    ]
    if timings:
        top = config["route"]
        top.update(timings)
        for route in top.get("routes", []):  # a sub-route keeps inheriting unless it sets its own
            route.update({k: v for k, v in timings.items() if k in route})
    return config


class Alertmanager:
    """The stack's Alertmanager on loopback (no HA cluster: its gossip port would default to 9094)."""

    def __init__(
        self,
        stack: StackSettings,
        *,
        name: str = "alertmanager",
        port: int | None = None,
        webhook_port: int | None = None,
        timings: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = stack.alertmanager_port if port is None else port
        self._host = stack.host
        self._webhook = f"http://{stack.host}:{stack.alert_webhook_port if webhook_port is None else webhook_port}"
        self._timings = timings
        self._proc = ManagedProcess(name)
        self.config = stack_path(name, "alertmanager.yml")
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
        """Debian's prometheus-alertmanager if missing; its system service stays stopped."""
        install_debian_packages(self.name, ["prometheus-alertmanager"], lambda: _binary("prometheus-alertmanager"))

    def start(self) -> None:
        """Render the config, check it with amtool, start unless ours already runs, wait for /-/ready."""
        if not self._proc.running():
            self.config.write_text(yaml.safe_dump(render_config(self._webhook, self._timings), sort_keys=False))
            checked = amtool("check-config", str(self.config))
            if checked.returncode != 0:
                raise StackError(f"{self.name}: {self.config} is invalid: {(checked.stdout + checked.stderr).strip()}")
            require_free_port(self._host, self.port, self.name)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv = [
                _binary("prometheus-alertmanager"),
                f"--config.file={self.config}",
                f"--storage.path={self.data_dir}",
                f"--web.listen-address={self.address}",
                "--cluster.listen-address=",
            ]
            self._proc.start(argv, cwd=self.data_dir)
        wait_until(self._ready, 60, f"{self.name} on {self.address}", self._proc.log_file)

    def stop(self) -> None:
        self._proc.stop()

    def health(self) -> Health:
        try:
            status = self.api("status")
        except StackError as err:
            return Health(False, str(err))
        return Health(True, f"Alertmanager {status['versionInfo']['version']}, receivers -> {self._webhook}/<name>")

    def api(self, path: str) -> Any:
        """GET ``/api/v2/<path>`` as JSON."""
        try:
            with _OPENER.open(f"{self.url}/api/v2/{path}", timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise StackError(f"{self.name}: GET /api/v2/{path} failed: {err}") from err

    def _ready(self) -> bool:
        if not self._proc.running():
            raise StackError(f"{self.name} exited during start-up; see {self._proc.log_file}")
        try:
            with _OPENER.open(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, subprocess.SubprocessError):
            return False
