"""Beam's portable runner Prism, built from the Go module proxy and run as a job server on loopback.

Prism is pinned to the Python SDK's own version (a job server of another release may not speak the
same protocol). ``ensure_prism()`` builds it once into ``.stack/prism/<version>[-patched-<digest>]/``
(~2-3 min cold, then cached); an explicit binary wins; where Go is absent it returns None and Beam's
PrismRunner downloads its (unpatched) release binary itself. When ``prism_patches/<version>/`` holds
patches, the module's source is copied from Go's module cache, patched with ``git apply`` and built with
``go build``; each patch's header says which Prism defect it fixes and what it measured.
``PrismJobServer`` runs it as a managed process, so a job can be submitted with
``--runner=PortableRunner --job_endpoint=...`` and the runner process can be stopped (or killed, in tests)
by its pid.
"""

import hashlib
import json
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
BEAM_GO_MODULE = "github.com/apache/beam/sdks/v2"
PRISM_MODULE = f"{BEAM_GO_MODULE}/go/cmd/prism"
PATCHES_DIR = Path(__file__).with_name("prism_patches")
BUILD_TIMEOUT_S = 900.0


def prism_patches(version: str = BEAM_VERSION) -> list[Path]:
    """The patches applied to Prism ``version``'s source before it is built, in order."""
    return sorted((PATCHES_DIR / version).glob("*.patch"))


def prism_binary_path(version: str = BEAM_VERSION) -> Path:
    """Where the build of ``version`` is cached; a changed set of patches is a new build."""
    patches = prism_patches(version)
    if not patches:
        return STACK_DIR / "prism" / version / "prism"
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in patches)).hexdigest()[:12]
    return STACK_DIR / "prism" / f"{version}-patched-{digest}" / "prism"


def ensure_prism(explicit: Path | None = None, version: str = BEAM_VERSION) -> Path | None:
    """The Prism binary to use: ``explicit``, else the cached build, else a fresh build; None without Go."""
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
    patches = prism_patches(version)
    how = f"with {len(patches)} patch(es) from {PATCHES_DIR.name}/{version}" if patches else "with go install"
    print(f"building Prism v{version} {how} (once; about 2-3 minutes)...", flush=True)
    if patches:
        _build_patched(go, version, patches, binary)
    else:
        _run(
            [go, "install", f"{PRISM_MODULE}@v{version}"], f"go install {PRISM_MODULE}@v{version}", GOBIN=binary.parent
        )
    if not binary.exists():
        raise StackError(f"building Prism v{version} left no binary at {binary}")
    return binary


def _build_patched(go: str, version: str, patches: list[Path], binary: Path) -> None:
    """Copies the Beam Go module's source out of Go's module cache, applies ``patches`` and builds Prism."""
    module = f"{BEAM_GO_MODULE}@v{version}"
    found = json.loads(_run([go, "mod", "download", "-json", module], f"go mod download {module}"))
    src = binary.parent / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for name in ("go.mod", "go.sum", "go"):  # the Go SDK only: the module also carries Java/Python sources
        origin = Path(found["Dir"]) / name
        (shutil.copytree if origin.is_dir() else shutil.copyfile)(origin, src / name)
    for path in src.rglob("*"):  # the module cache is read-only
        path.chmod(path.stat().st_mode | 0o200)
    src.chmod(src.stat().st_mode | 0o200)
    for patch in patches:
        # The ceiling keeps git from treating .stack's enclosing checkout as the repository to patch.
        _run(
            ["git", "apply", str(patch)],
            f"applying {patch.name} to {module}",
            cwd=src,
            GIT_CEILING_DIRECTORIES=src.parent,
        )
    _run([go, "build", "-o", str(binary), "./go/cmd/prism"], f"go build of patched Prism v{version}", cwd=src)
    shutil.rmtree(src)


def _run(argv: list[str], what: str, cwd: Path | None = None, **env: os.PathLike | str) -> str:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, "GOFLAGS": "-mod=mod", **{k: str(v) for k, v in env.items()}},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise StackError(f"{what} failed:\n{done.stderr[-2000:]}")
    return done.stdout


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
