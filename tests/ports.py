"""Ports for test fixtures: an ``IT_*`` environment variable when set, else one that is free now.

Free ports come from the kernel (bind to port 0), or from ``IT_PORT_RANGE=low-high`` when set, for machines
where other people's stacks own parts of the ephemeral range.
"""

import os
import socket

_taken: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on (bound once, then released); never the same one twice."""
    if "IT_PORT_RANGE" in os.environ:
        low, high = (int(p) for p in os.environ["IT_PORT_RANGE"].split("-"))
        port = next((p for p in range(low, high + 1) if _is_free(p)), None)
        if port is None:
            raise RuntimeError(f"no free port left in IT_PORT_RANGE={low}-{high}")
        _taken.add(port)
        return port
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _taken:
            _taken.add(port)
            return port


def port_for(env: str) -> int:
    return int(os.environ[env]) if env in os.environ else free_port()


def port_range_for(low_env: str, high_env: str, size: int) -> tuple[int, int]:
    """``size`` consecutive free ports (Flink's reporter takes a range), or the range the variables name."""
    if low_env in os.environ and high_env in os.environ:
        return int(os.environ[low_env]), int(os.environ[high_env])
    while True:
        low = free_port()
        ports = range(low, low + size)
        if ports[-1] < 65536 and all(_is_free(p) for p in ports[1:]):
            _taken.update(ports)
            return low, ports[-1]


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return port not in _taken
