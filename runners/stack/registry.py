"""The stack's schema registry: the project's Confluent-compatible registry (``schema_registry/``).

No real registry runs here without Docker (Confluent's and Karapace are not in the reachable package
registries; Apicurio Registry's app on Maven Central depends on an artifact Maven Central does not serve),
so the stack runs ``python -m schema_registry`` as a ``ManagedProcess``. It keeps its state in the
compacted ``_schemas`` topic of the stack's Kafka, so it needs Kafka up first and survives restarts.
"""

import sys
import time

import httpx

from runners.stack.kafka import reap_if_exited
from runners.stack.process import REPO_ROOT, Health, ManagedProcess, StackError, port_open, require_free_port
from runners.stack.settings import StackSettings

START_TIMEOUT_S = 60.0


class SchemaRegistry:
    """``python -m schema_registry`` on ``stack.registry_port``, backed by the topic ``topic`` on the stack's Kafka."""

    def __init__(
        self,
        stack: StackSettings,
        *,
        name: str = "schema-registry",
        topic: str = "_schemas",
    ) -> None:
        self.name = name
        self.topic = topic
        self._stack = stack
        self._proc = ManagedProcess(name)

    @property
    def address(self) -> str:
        return self.url

    @property
    def url(self) -> str:
        return self._stack.registry_url

    @property
    def pid(self) -> int | None:
        return self._proc.pid()

    def install(self) -> None:
        """Nothing to fetch: the registry is this repository's code plus pinned Python packages; check them."""
        missing = []
        for module in ("starlette", "uvicorn", "avro", "confluent_kafka", "httpx"):
            try:
                __import__(module)
            except ImportError:
                missing.append(module)
        if missing:
            raise StackError(f"{self.name}: Python packages {missing} are missing; run `make setup`")

    def start(self) -> None:
        """Start the registry unless ours runs; it loads its state from Kafka before it answers."""
        if self._proc.running():
            self._wait_ready()
            return
        require_free_port(self._stack.host, self._stack.registry_port, self.name)
        if not port_open(self._stack.host, self._stack.kafka_port):
            raise StackError(
                f"{self.name}: Kafka is not reachable on {self._stack.kafka_bootstrap}; the registry stores its "
                "state there, start Kafka first"
            )
        self._proc.start(
            [
                sys.executable,
                "-m",
                "schema_registry",
                "--host",
                self._stack.host,
                "--port",
                str(self._stack.registry_port),
                "--bootstrap",
                self._stack.kafka_bootstrap,
                "--topic",
                self.topic,
            ],
            cwd=REPO_ROOT,
        )
        self._wait_ready()

    def stop(self) -> None:
        self._proc.stop(timeout=20.0)

    def health(self) -> Health:
        """Healthy when ``GET /subjects`` answers 200 (the state is loaded)."""
        try:
            response = httpx.get(f"{self.url}/subjects", timeout=3.0)
        except httpx.HTTPError as err:
            return Health(False, f"no answer on {self.url}: {type(err).__name__}")
        if response.status_code != 200:
            return Health(False, f"GET /subjects answered {response.status_code}: {response.text[:200]}")
        owner = f"pid {self.pid}" if self.pid else "not started by this stack"
        return Health(True, f"{len(response.json())} subject(s), topic {self.topic}, {owner}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.health().ok:
                return
            reap_if_exited(self._proc.pid())
            if not self._proc.running():
                tail = self._proc.log_file.read_text(errors="replace").splitlines()[-25:]
                raise StackError(
                    f"{self.name}: the registry exited during start-up; last log lines:\n" + "\n".join(tail)
                )
            time.sleep(0.3)
        raise StackError(
            f"{self.name}: no answer on {self.url} within {START_TIMEOUT_S:.0f}s; see {self._proc.log_file}"
        )
