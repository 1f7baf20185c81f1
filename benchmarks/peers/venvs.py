"""One venv per peer framework, so their pins never touch the project's.

``python -m benchmarks.peers.venvs [quix|bytewax|all]`` (run with the project venv) creates each missing venv
under ``.stack/bench/<name>/venv``, installs the pinned requirements and prints the venv's interpreter. A marker
file holds the requirements it was installed with: a pin change here reinstalls on the next call.
"""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / ".stack" / "bench"

#: name -> pip requirements of that peer's venv. The apps import ``schemas.serde``/``registry``/``rules``/``catalog``
#: from the project (PYTHONPATH), which need fastavro, pydantic and confluent-kafka's schema registry client.
PINS: dict[str, tuple[str, ...]] = {
    "quix": (
        "quixstreams==3.28.1",
        "fastavro==1.13.1",
        "pydantic>=2,<3",
        # quixstreams pins confluent-kafka itself; the extra brings the schema registry client's dependencies.
        "confluent-kafka[schemaregistry]",
    ),
    "bytewax": (
        "bytewax[kafka]==0.21.1",
        "fastavro==1.13.1",
        "pydantic>=2,<3",
        # bytewax only asks for confluent-kafka>=2.0.2: the project's own pin, for a reproducible client.
        "confluent-kafka[schemaregistry]==2.16.1",
    ),
}

_MARKER = ".requirements"


def venv_dir(name: str) -> Path:
    return BENCH_DIR / name / "venv"


def _requirements(name: str) -> str:
    try:
        return "\n".join(PINS[name]) + "\n"
    except KeyError:
        raise SystemExit(f"unknown peer {name!r}; known: {', '.join(sorted(PINS))}") from None


def peer_python(name: str) -> Path:
    """The interpreter of peer ``name``'s venv, created (or reinstalled after a pin change) if needed."""
    wanted = _requirements(name)
    venv = venv_dir(name)
    python = venv / "bin" / "python"
    marker = venv / _MARKER
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        # The base interpreter, not this venv's: the peer venv must not see the project's site-packages.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    marker.unlink(missing_ok=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PINS[name]], check=True)
    marker.write_text(wanted)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.venvs", description=__doc__)
    parser.add_argument("peer", nargs="?", default="all", choices=[*sorted(PINS), "all"])
    args = parser.parse_args(argv)
    for name in sorted(PINS) if args.peer == "all" else [args.peer]:
        print(peer_python(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
