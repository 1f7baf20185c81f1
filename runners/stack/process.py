"""Process plumbing shared by every stack component: paths, pid files, ports, health waits.

A component's process is started in its own session with its pid recorded under
``.stack/run/<name>.pid``; stopping signals exactly that pid (after checking it is still the
process we started), never a pattern match, so ``make down`` cannot hit anything else.
"""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_DIR = Path(os.environ.get("STACK_DIR", REPO_ROOT / ".stack"))


class StackError(RuntimeError):
    """A component cannot be installed, started or reached; the message says what to do."""


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


class Component(Protocol):
    """What ``python -m runners.stack up|down|status`` drives; every method is idempotent."""

    name: str

    @property
    def address(self) -> str: ...

    def install(self) -> None:
        """Fetch or build what is missing (jars, packages, data directories)."""

    def start(self) -> None:
        """Start unless already healthy; raise ``StackError`` with a clear reason on failure."""

    def stop(self) -> None:
        """Stop the process this stack started, if any."""

    def health(self) -> Health: ...


def stack_path(*parts: str) -> Path:
    path = STACK_DIR.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_free_port(host: str, port: int, component: str) -> None:
    if port_open(host, port):
        raise StackError(
            f"{component}: port {host}:{port} is already in use by another process; stop it or configure another port"
        )


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    hint = f"; see {log}" if log else ""
    raise StackError(f"{what} did not become ready within {timeout:.0f}s{hint}")


class ManagedProcess:
    """One long-running process with a pid file and a log file under ``.stack/``."""

    def __init__(self, name: str):
        self.name = name
        self.pid_file = stack_path("run", f"{name}.pid")
        self.log_file = stack_path("logs", f"{name}.log")

    def pid(self) -> int | None:
        """The recorded pid if that process still runs (and is not a recycled pid of something else)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            started = self.pid_file.read_text().split()[1]
        except (OSError, ValueError, IndexError):
            return None
        if _start_time(pid) != started or not _alive(pid):
            return None  # gone, a zombie, or the pid now names another process
        return pid

    def start(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        if self.pid() is not None:
            return self.pid()
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
        return proc.pid

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the recorded process group, SIGKILL after ``timeout``; True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            while time.monotonic() < deadline + 10 and _alive(pid):
                time.sleep(0.2)
        self.pid_file.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs. Its main thread can be a zombie while other threads are still
    exiting (and holding its sockets: Prism stopped this way still listened on its port), so all are looked at."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    for task in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            if task.read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except OSError:  # that thread is gone
            continue
    return False


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/<pid>/stat): pid + start time names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def install_debian_packages(component: str, packages: list[str], present: Callable[[], bool]) -> None:
    """``apt-get install`` ``packages`` unless ``present()``; services stay stopped (we run our own process)."""
    if present():
        return
    if os.geteuid() != 0:
        raise StackError(f"{component}: not installed; run `sudo apt-get install -y {' '.join(packages)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:  # keep the package's init script from starting a system service on our port
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        for argv in (
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-qq"],
            ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-qq", "--no-install-recommends", *packages],
        ):
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise StackError(f"{component}: `{' '.join(argv)}` failed: {done.stderr.strip()[-2000:]}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if not present():
        raise StackError(f"{component}: {' '.join(packages)} installed but still not found")
