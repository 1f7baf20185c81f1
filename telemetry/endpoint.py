"""One ``/metrics`` endpoint per worker process, and a file-based service discovery entry for it.

Whatever DoFn of the pipeline a worker runs calls ``serve_worker_metrics()`` in ``setup()``; the first call
in a process starts prometheus-client's HTTP server (later calls return its address). Where the worker runs
is the deployment's choice, so the address comes from the worker's environment, set by the runner profile
(LOOPBACK: the launcher's own environment; an EXTERNAL worker pool: each worker's):

- ``CLICKSTREAM_METRICS_PORT``: the port; 0 takes a free one (several workers on one host). Unset: no
  endpoint (unit tests, or a runner that exports Beam metrics itself).
- ``CLICKSTREAM_METRICS_HOST``: the address to bind (default 127.0.0.1).
- ``CLICKSTREAM_METRICS_TARGETS``: a directory Prometheus reads with ``file_sd_configs``; the worker writes
  ``worker-<host>-<pid>.json`` there naming its address, and removes it when the process exits.
"""

import atexit
import json
import os
import socket
import threading
from pathlib import Path

from prometheus_client import start_http_server

from telemetry.metrics import REGISTRY

PORT_ENV = "CLICKSTREAM_METRICS_PORT"
HOST_ENV = "CLICKSTREAM_METRICS_HOST"
TARGETS_ENV = "CLICKSTREAM_METRICS_TARGETS"

_lock = threading.Lock()
_address: str | None = None


def serve_worker_metrics() -> str | None:
    """Start this process's endpoint once (if configured); its ``host:port``, or None when not configured."""
    global _address
    with _lock:
        if _address is not None or PORT_ENV not in os.environ:
            return _address
        host = os.environ.get(HOST_ENV, "127.0.0.1")
        server, _ = start_http_server(int(os.environ[PORT_ENV]), addr=host, registry=REGISTRY)
        _address = f"{host}:{server.server_port}"
        targets = os.environ.get(TARGETS_ENV)
        if targets:
            register_target(Path(targets), "worker", _address, {"pid": str(os.getpid())})
        return _address


def register_target(directory: Path, kind: str, address: str, labels: dict[str, str]) -> Path:
    """Write a file_sd entry for ``address`` (atomically: Prometheus never reads half a file); removed at exit."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{socket.gethostname()}-{os.getpid()}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps([{"targets": [address], "labels": labels}]))
    partial.replace(path)
    atexit.register(path.unlink, missing_ok=True)
    return path


def prune_targets(directory: Path) -> list[Path]:
    """Remove entries of processes of this host that no longer run (killed workers cannot remove their own)."""
    removed = []
    host = socket.gethostname()
    for path in directory.glob(f"*-{host}-*.json"):
        pid = int(path.stem.rsplit("-", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed.append(path)
        except PermissionError:
            pass  # alive, another user's
    return removed
