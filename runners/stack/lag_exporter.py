"""The consumer-lag exporter as a stack component: ``python -m monitoring.lag_exporter`` for the pipeline's
group on its input topic, on the stack's Kafka, serving ``/metrics`` on ``lag_exporter_port``."""

import sys
import urllib.error
import urllib.request

from beam_pipelines.settings import PipelineSettings
from runners.stack.process import REPO_ROOT, Health, ManagedProcess, port_open, require_free_port, wait_until
from runners.stack.settings import StackSettings

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LagExporter:
    def __init__(self, stack: StackSettings, pipeline: PipelineSettings, *, name: str = "lag-exporter") -> None:
        self.name = name
        self._stack = stack
        self._pipeline = pipeline
        self._proc = ManagedProcess(name)

    @property
    def address(self) -> str:
        return f"{self._stack.host}:{self._stack.lag_exporter_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid()

    def install(self) -> None:
        """Nothing to fetch: it runs from this checkout's venv."""

    def start(self) -> None:
        host, port = self._stack.host, self._stack.lag_exporter_port
        if not self._proc.running():
            require_free_port(host, port, self.name)
            self._proc.start(
                [
                    sys.executable,
                    "-m",
                    "monitoring.lag_exporter",
                    f"--bootstrap={self._stack.kafka_bootstrap}",
                    f"--group={self._pipeline.kafka.consumer_group}",
                    f"--topic={self._pipeline.kafka.input_topic}",
                    f"--host={host}",
                    f"--port={port}",
                ],
                cwd=REPO_ROOT,
            )
        wait_until(lambda: port_open(host, port), 30, self.name, self._proc.log_file)

    def stop(self) -> None:
        self._proc.stop()

    def health(self) -> Health:
        try:
            with _OPENER.open(f"http://{self.address}/metrics", timeout=10) as response:
                body = response.read().decode()
        except (urllib.error.URLError, OSError) as err:
            return Health(False, f"GET /metrics failed: {err}")
        if "kafka_lag_exporter_up 1.0" not in body:
            return Health(False, "serving, but its last read of Kafka failed (kafka_lag_exporter_up 0)")
        group, topic = self._pipeline.kafka.consumer_group, self._pipeline.kafka.input_topic
        return Health(True, f"lag of {group} on {topic}")
