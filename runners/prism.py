"""Beam's portable runner Prism, built from the Go module proxy and run as a job server on loopback.

Prism is pinned to the Python SDK's own version (a job server of another release may not speak the
same protocol). ``ensure_prism()`` builds it once with ``go install`` into ``.stack/prism/<version>/``
(~2-3 min cold, then cached); an explicit binary wins; where Go is absent it returns None and Beam's
PrismRunner downloads its release binary itself. ``PrismJobServer`` runs it as a managed process, so a
job can be submitted with ``--runner=PortableRunner --job_endpoint=...`` and the runner process can be
stopped (or killed, in tests) by its pid.
"""

import os
import shutil
import subprocess
from pathlib import Path

import apache_beam

from runners.stack.process import (
    STACK_DIR,
    Health,
    ManagedProcess,
    StackError,
    port_open,
    require_free_port,
    wait_until,
)
from runners.stack.settings import StackSettings

BEAM_VERSION = apache_beam.__version__
PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"
BUILD_TIMEOUT_S = 900.0


def prism_binary_path(version: str = BEAM_VERSION) -> Path:
    return STACK_DIR / "prism" / version / "prism"


def ensure_prism(explicit: Path | None = None, version: str = BEAM_VERSION) -> Path | None:
    """The Prism binary to use: ``explicit``, else the cached build, else a fresh ``go install``; None without Go."""
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise StackError(f"prism binary {explicit} does not exist or is not executable")
        return explicit
    binary = prism_binary_path(version)
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        return None
    binary.parent.mkdir(parents=True, exist_ok=True)
    print(f"building Prism v{version} with go install (once; about 2-3 minutes)...", flush=True)
    done = subprocess.run(
        [go, "install", f"{PRISM_MODULE}@v{version}"],
        env={**os.environ, "GOBIN": str(binary.parent), "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if done.returncode != 0 or not binary.exists():
        raise StackError(f"go install {PRISM_MODULE}@v{version} failed:\n{done.stderr[-2000:]}")
    return binary


class PrismJobServer:
    """Prism's job service on ``host:port`` (a stack component: install, start, stop, health)."""

    def __init__(self, stack: StackSettings, *, name: str = "prism", binary: Path | None = None):
        self.name = name
        self._host = stack.host
        self._port = stack.prism_port
        self._ui_port = stack.prism_ui_port
        self._binary = binary
        self._proc = ManagedProcess(name)

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    @property
    def endpoint(self) -> str:
        return self.address

    def ui_url(self, job_id: str) -> str:
        """The job's page in Prism's web UI (which binds localhost only)."""
        return f"http://{self._host}:{self._ui_port}/job/{job_id}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid()

    def install(self) -> None:
        self._binary = ensure_prism(self._binary)
        if self._binary is None:
            raise StackError("prism: Go is not installed, so Prism cannot be built (install golang, or pass a binary)")

    def start(self) -> None:
        if not self._proc.running():
            require_free_port(self._host, self._port, self.name)
            if self._binary is None:
                self.install()
            self._proc.start(
                [str(self._binary), f"--job_port={self._port}", f"--web_port={self._ui_port}", "--log_level=warn"],
            )
        wait_until(lambda: port_open(self._host, self._port), 30, f"{self.name} job service", self._proc.log_file)

    def stop(self) -> None:
        self._proc.stop(timeout=10.0)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of restarts)."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, 9)

    def health(self) -> Health:
        if port_open(self._host, self._port):
            return Health(True, f"job service on {self.address}")
        return Health(False, f"nothing listens on {self.address}")
