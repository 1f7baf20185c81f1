"""The end-to-end benchmark run for real, small: the passthrough, this pipeline on Prism and both peers in their
own venvs drain one workload, every per-record output is checked, the table and the plot come out, and the
benchmark's topics are gone afterwards."""

import re
import subprocess
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from runners.stack.process import ManagedProcess
from runners.stack.settings import StackSettings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_the_benchmark_measures_every_system_on_one_workload_and_cleans_up(tmp_path):
    already_up = ManagedProcess("kafka").pid() is not None  # a developer's `make up`: use it, leave it running
    plot = tmp_path / "bench.png"
    try:
        subprocess.run(["make", "up"], cwd=REPO, capture_output=True, timeout=900, check=True)
        done = subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), "-m", "benchmarks.end_to_end", "--events", "2000"]
            + ["--latency-seconds", "2", "--systems", "raw,beam,quix,bytewax", "--plot", str(plot)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        out = done.stdout
        print(out[-2500:])
        assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]  # 1: some system's outputs were wrong
        table = out[out.index("system ") :]
        for name in ("raw passthrough", "beam on prism", "quix streams 3", "bytewax 0.21"):
            row = next(line for line in table.splitlines() if line.startswith(name))
            assert row.endswith("ok") and row.count("/") == 4, row  # p50/p99/p999 at both loads
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        admin = AdminClient({"bootstrap.servers": StackSettings.from_env().kafka_bootstrap})
        run = re.search(r"published to (bench-\w+)\.raw", out).group(1)
        left = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{run}.")]
        assert not left, left
    finally:
        if not already_up:
            subprocess.run(["make", "down"], cwd=REPO, capture_output=True, timeout=300)
