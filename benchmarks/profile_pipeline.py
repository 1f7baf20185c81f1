"""Where the pipeline's worker spends its time: py-spy samples the LOOPBACK worker process while it drains a
generated topic, and the samples are summed per stage (inclusive) and per kind of code (the sampled frame).

``python -m benchmarks.profile_pipeline [--events N] [--set path=value ...]`` (needs ``make up``); the raw
py-spy samples are kept under ``.stack/bench/`` for a flame graph (``py-spy`` ``--format raw`` lines).
"""

import argparse
import dataclasses
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from beam_pipelines.settings import load_settings
from benchmarks import measure
from benchmarks.end_to_end import PARTITIONS, SYSTEMS, Bench, _beam
from benchmarks.workload import workload_config
from runners.live import publish_sample
from runners.stack.kafka import delete_topics, ensure_topics
from runners.stack.process import stack_path
from runners.stack.settings import StackSettings

REPO = Path(__file__).resolve().parents[1]
#: Inclusive time per stage: a sample counts for a stage when any of its frames is in that file.
STAGES = {
    "kafkaio/source.py": "read (Kafka source SDF)",
    "transforms/decode.py": "decode",
    "transforms/validate.py": "validate",
    "transforms/dedupe.py": "dedupe",
    "transforms/enrich.py": "enrich",
    "transforms/route.py": "route",
    "transforms/windowed_metrics.py": "window metrics",
    "transforms/sessions.py": "sessions",
    "transforms/encode.py": "encode",
    "kafkaio/sink.py": "write (Kafka sink)",
    "kafkaio/commit.py": "commit offsets",
}
#: Self time per kind of code: the innermost frame's file, first match wins.
KINDS = (
    ("site-packages/fastavro", "fastavro (Avro)"),
    ("site-packages/confluent_kafka", "confluent-kafka client"),
    ("site-packages/grpc", "gRPC (runner <-> worker)"),
    ("site-packages/google/protobuf", "protobuf"),
    ("apache_beam/coders", "Beam coders"),
    ("apache_beam/runners/worker", "Beam SDK harness"),
    ("apache_beam/", "Beam (other)"),
    ("site-packages/", "other libraries"),
    (str(REPO), "project code"),
)


def summarize(raw: Path) -> tuple[int, Counter, Counter]:
    """(samples, inclusive samples per stage, self samples per kind of code) of a py-spy raw file."""
    total, stages, kinds = 0, Counter(), Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for path, stage in STAGES.items():
            if any(path in frame for frame in frames):
                stages[stage] += n
        leaf = frames[-1]
        kinds[next((kind for marker, kind in KINDS if marker in leaf), "interpreter / stdlib")] += n
    return total, stages, kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_pipeline", description=__doc__)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    args = parser.parse_args(argv)
    stack = StackSettings.from_env()
    run_id = uuid.uuid4().hex[:6]
    bench = Bench(stack, run_id, timeout=1800)
    input_topic = f"bench-{run_id}.raw"
    raw = stack_path("bench", f"profile-{run_id}.txt")
    try:
        ensure_topics(stack.kafka_bootstrap, [input_topic], partitions=PARTITIONS)
        settings = load_settings(
            overrides=(f"kafka.bootstrap_servers={stack.kafka_bootstrap}", f"kafka.input_topic={input_topic}")
        )
        records = publish_sample(settings, workload_config(args.events), bench.registry)
        system = dataclasses.replace(SYSTEMS["beam"], argv=_beam(*args.overrides))
        topics = bench.topics("beam", "profile", system, input_topic)
        proc = bench.start(system, topics)
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(proc.pid), "-r", str(args.rate)]
            + ["--format", "raw", "-o", str(raw), "--gil"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        try:
            measure.wait_for_records(
                bench.settings, topics.per_record(), len(records), 1800, lambda: proc.poll() is None
            )
        finally:
            seconds = time.monotonic() - started
            spy.send_signal(2)
            spy.wait(60)
            bench.stop(proc)
        total, stages, kinds = summarize(raw)
        print(f"{len(records):,} records drained in {seconds:.1f}s ({len(records) / seconds:,.0f}/s incl. start-up)")
        print(f"{total:,} samples of the worker process (the thread holding the GIL) -> {raw}")
        print(f"\n{'stage (inclusive)':<28}{'share':>8}")
        for stage, n in stages.most_common():
            print(f"{stage:<28}{n / total:>8.1%}")
        print(f"\n{'kind of code (self)':<28}{'share':>8}")
        for kind, n in kinds.most_common():
            print(f"{kind:<28}{n / total:>8.1%}")
        return 0
    finally:
        delete_topics(stack.kafka_bootstrap, f"bench-{run_id}.")


if __name__ == "__main__":
    sys.exit(main())
