"""The whole pipeline measured side by side with the physical limit and its peers, on one workload.

Every system reads the same generated raw topic (Confluent Avro, ~5% invalid, ~3% late, 6 partitions) from the
same local broker, one after another on the same cores, and writes its outputs to topics of its own:
  raw passthrough     confluent-kafka consume -> produce, bytes untouched (the physical reference)
  avro passthrough    consume -> Avro decode -> encode -> produce
  beam passthrough    the project's Kafka source -> Kafka sink on Prism, nothing between: Beam's floor here
  beam ...            this pipeline on Prism with the native Kafka IO (the layouts/settings in SYSTEMS)
  quix / bytewax      Quix Streams 3 and Bytewax 0.21, each in its own venv (benchmarks/peers), doing the same
                      logical work: decode, validate + filter, route, 1-minute tumbling counts, dead letters
Throughput: records / (last - first output timestamp) while it drains the pre-filled topic. Latency: a second
and third run fed at 50% and 80% of that rate; Kafka timestamp of the input to that of the routed output.
CPU seconds and peak RSS are of the system's processes (Prism's job server included for the pipeline). Every
run on Prism gets a job server of its own, started fresh: Prism keeps each finished job's state in memory (GBs
after a few 500k jobs), which would slow and bloat the runs after it.
Correctness: every system's per-record outputs (events, orders, alerts, filtered, dead letters) must equal what
the generator's labels give; "windowed" is the share of the events the closed 1-minute windows counted. That
share is not pass/fail: reading a backlog, each system's event-time progress depends on how it interleaves the
partitions, so events a little late may fall behind its watermark (and very late ones may not).

``python -m benchmarks.end_to_end [--events N] [--systems a,b] [--latency-seconds S] [--prism BINARY]``
(needs ``make up``).
"""

import argparse
import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from beam_pipelines.settings import load_settings
from benchmarks import measure
from benchmarks.peers.work import HIGH_VALUE_MINOR, ORDER_TYPES
from benchmarks.workload import Expected, expected_outputs, feed_records, paced_feed, workload_config
from runners.live import end_offsets, publish_sample, read_range
from runners.prism import PrismJobServer
from runners.stack.kafka import delete_topics, ensure_topics
from runners.stack.process import port_open, stack_path
from runners.stack.settings import StackSettings
from schemas.catalog import schema_json
from schemas.records import epoch_millis
from schemas.registry import ConfluentRegistry
from schemas.serde import ConfluentAvroSerde, SerdeError

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 6
MAX_FEED = 100_000  # records of one paced latency feed
PEER_OUTPUTS = ("events", "orders", "high_value_alerts", "filtered", "dead_letters", "window_metrics")
#: The routes every system applies (the pipeline's as settings): orders, high-value alerts, and all valid events.
BENCH_ROUTES = "routes=" + json.dumps(
    [
        {"name": "orders", "event_types": sorted(ORDER_TYPES)},
        {"name": "high_value_alerts", "min_amount_minor": HIGH_VALUE_MINOR},
        {"name": "events"},
    ]
)


@dataclass(frozen=True)
class Topics:
    input: str
    group: str
    outputs: dict[str, str]  # output name -> topic

    def per_record(self) -> list[str]:
        """The outputs every input record ends in exactly one of."""
        return [self.outputs[n] for n in ("events", "filtered", "dead_letters", "unrouted") if n in self.outputs]


@dataclass(frozen=True)
class System:
    name: str
    argv: Callable[[Topics, StackSettings], list[str]]
    outputs: tuple[str, ...] = PEER_OUTPUTS
    events_contract: str = "clickstream_event"  # what its events output carries
    uses_prism: bool = False
    checks: bool = True  # it does the logical work (the passthroughs only forward)
    env: dict[str, str] = field(default_factory=dict)


def _passthrough(module: str, *extra: str) -> Callable[[Topics, StackSettings], list[str]]:
    def argv(topics: Topics, stack: StackSettings) -> list[str]:
        return [sys.executable, "-m", module, *extra, *_common(topics, stack)]

    return argv


def _common(topics: Topics, stack: StackSettings) -> list[str]:
    args = ["--bootstrap", stack.kafka_bootstrap, "--registry-url", stack.registry_url]
    args += ["--input-topic", topics.input, "--group", topics.group]
    for name, topic in topics.outputs.items():
        args += ["--topic", f"{name}={topic}"]
    return args


def _peer(name: str, *extra: str) -> Callable[[Topics, StackSettings], list[str]]:
    def argv(topics: Topics, stack: StackSettings) -> list[str]:
        from benchmarks.peers.venvs import peer_python

        args = [str(peer_python(name)), "-m", f"benchmarks.peers.{name}_app", *_common(topics, stack), *extra]
        if name == "quix":  # its repartition/changelog topics under the run's prefix, deleted with the others
            args += ["--internal-topic-prefix", topics.group.removesuffix("group")]
        return args

    return argv


def _beam(*overrides: str) -> Callable[[Topics, StackSettings], list[str]]:
    def argv(topics: Topics, stack: StackSettings) -> list[str]:
        sets = [
            f"kafka.input_topic={topics.input}",
            f"kafka.consumer_group={topics.group}",
            BENCH_ROUTES,
            *(f"kafka.output_topics.{name}={topic}" for name, topic in topics.outputs.items()),
            *overrides,
        ]
        return [sys.executable, "-m", "runners", "--events", "0", "--follow", *(a for s in sets for a in ("--set", s))]

    return argv


BEAM_OUTPUTS = (
    "events",
    "orders",
    "high_value_alerts",
    "unrouted",
    "window_metrics",
    "sessions",
    "filtered",
    "dead_letters",
)
SYSTEMS = {
    "raw": System(
        "raw passthrough", _passthrough("benchmarks.passthrough", "--mode", "raw"), ("events",), checks=False
    ),
    "avro": System(
        "avro passthrough", _passthrough("benchmarks.passthrough", "--mode", "avro"), ("events",), checks=False
    ),
    "beam-floor": System(
        "beam passthrough (floor)",
        _passthrough("benchmarks.beam_passthrough"),
        ("events",),
        uses_prism=True,
        checks=False,
    ),
    "beam": System("beam on prism", _beam(), BEAM_OUTPUTS, "enriched_event", uses_prism=True),
    "beam-bundle1000": System(
        "beam, 1000/bundle",
        _beam("kafka.read_max_records_per_bundle=1000", "kafka.read_max_bundle_seconds=1"),
        BEAM_OUTPUTS,
        "enriched_event",
        uses_prism=True,
    ),
    "beam-nodedupe": System(
        "beam, dedupe off", _beam("dedupe.enabled=false"), BEAM_OUTPUTS, "enriched_event", uses_prism=True
    ),
    "quix": System("quix streams 3", _peer("quix")),
    "bytewax": System("bytewax 0.21", _peer("bytewax")),
    "bytewax-2w": System("bytewax 0.21, 2 workers", _peer("bytewax", "--workers", "2")),
}


@dataclass
class Measured:
    records: int
    seconds: float  # first to last output timestamp
    wall: float  # start of the process to the last output
    cpu: float
    peak_rss: int
    counts: dict[str, int]
    window_events: int | None = None
    latency: dict[int, tuple[float, float, float]] = field(default_factory=dict)  # load % -> p50/p99/p999 ms

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class Bench:
    def __init__(self, stack: StackSettings, run_id: str, timeout: float, prism: Path | None = None):
        self.stack = stack
        self.prism = prism
        self.settings = load_settings(overrides=(f"kafka.bootstrap_servers={stack.kafka_bootstrap}",))
        self.run_id = run_id
        self.timeout = timeout
        self.registry = ConfluentRegistry(stack.registry_url)
        self.prism_pid = PrismJobServer(stack).pid

    def topics(self, key: str, phase: str, system: System, input_topic: str) -> Topics:
        prefix = f"bench-{self.run_id}.{key}.{phase}"
        outputs = {name: f"{prefix}.{name}" for name in system.outputs}
        ensure_topics(self.stack.kafka_bootstrap, outputs.values(), partitions=PARTITIONS)
        return Topics(input_topic, f"{prefix}.group", outputs)

    def fresh_job_server(self, binary: Path | None) -> None:
        """Replaces the stack's Prism job server by a new one of ``binary`` (None: the stack's build)."""
        server = PrismJobServer(self.stack, binary=binary)
        server.stop()
        server.start()
        self.prism_pid = server.pid

    def start(self, system: System, topics: Topics) -> subprocess.Popen:
        if system.uses_prism:
            self.fresh_job_server(self.prism)
        env = {**os.environ, "PYTHONPATH": str(REPO), **system.env}
        with open(stack_path("bench", f"{self.run_id}-{topics.group}.log"), "wb") as log:
            return subprocess.Popen(
                system.argv(topics, self.stack), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )

    def sample(self, system: System, proc: subprocess.Popen) -> measure.ResourceSampler:
        """CPU and RSS of ``proc``'s tree, and of Prism's job server when the system runs on it."""
        roots = [proc.pid] + ([self.prism_pid] if system.uses_prism and self.prism_pid else [])
        return measure.ResourceSampler(roots).start()

    def stop(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def throughput(self, key: str, system: System, input_topic: str, expected: int) -> tuple[Measured, Topics]:
        topics = self.topics(key, "max", system, input_topic)
        started = time.monotonic()
        proc = self.start(system, topics)
        sampler = self.sample(system, proc)
        try:
            outputs = topics.per_record()
            measure.wait_for_records(self.settings, outputs, expected, self.timeout, lambda: proc.poll() is None)
            wall = time.monotonic() - started
            time.sleep(3)  # let the windows of the last events fire
        finally:
            cpu = sampler.stop()
            self.stop(proc)
        spans = [measure.topic_span(self.stack.kafka_bootstrap, t) for t in outputs]
        first = min(s.first_ms for s in spans if s.first_ms is not None)
        last = max(s.last_ms for s in spans if s.last_ms is not None)
        counts = measure.records_in(self.settings, list(topics.outputs.values()))
        return Measured(
            records=sum(s.records for s in spans),
            seconds=(last - first) / 1000,
            wall=wall,
            cpu=cpu,
            peak_rss=sampler.peak_rss,
            counts={name: counts[topic] for name, topic in topics.outputs.items()},
        ), topics

    def latency(self, key: str, system: System, rate: float, seconds: float, load: int) -> tuple[float, float, float]:
        input_topic = f"bench-{self.run_id}.{key}.lat{load}.raw"
        ensure_topics(self.stack.kafka_bootstrap, [input_topic], partitions=PARTITIONS)
        topics = self.topics(key, f"lat{load}", system, input_topic)
        config = workload_config(0)
        warmup = feed_records(config, self.registry, 200, seed=load)
        # Capped: a paced Python producer tops out near 100k records/s, so the fastest systems are fed at that.
        feed = feed_records(config, self.registry, max(100, min(int(rate * seconds), MAX_FEED)), seed=load + 1)
        proc = self.start(system, topics)
        try:
            paced_feed(self.stack.kafka_bootstrap, input_topic, warmup, 200)
            outputs = topics.per_record()
            alive = lambda: proc.poll() is None  # noqa: E731
            measure.wait_for_records(self.settings, outputs, len(warmup), self.timeout, alive)
            sent = paced_feed(self.stack.kafka_bootstrap, input_topic, feed, rate)
            total = len(warmup) + len(feed)
            measure.wait_for_records(self.settings, outputs, total, self.timeout, alive)
        finally:
            self.stop(proc)
        return _percentiles(self._latencies(topics.outputs["events"], system.events_contract, sent))

    def _latencies(self, topic: str, contract: str, sent: dict[str, int]) -> list[int]:
        serde = ConfluentAvroSerde(self.registry, schema_json(contract))
        out = []
        for value, ts in self._records(topic):
            try:
                row = serde.decode(value)
            except SerdeError:  # a passthrough forwards bad records as they are
                continue
            event_id = row["event"]["event_id"] if "event" in row else row["event_id"]
            if event_id in sent:
                out.append(ts - sent[event_id])
        return out

    def _records(self, topic: str) -> list[tuple[bytes, int]]:
        """(value, timestamp ms) of every record of ``topic``."""
        messages = read_range(self.settings, topic, {}, end_offsets(self.settings, topic))
        return [(m.value(), m.timestamp()[1]) for m in messages]

    def window_events(self, topic: str, cut_ms: int) -> int:
        """Events counted by the windows closed everywhere: the last pane of each window key, summed."""
        serde = ConfluentAvroSerde(self.registry, schema_json("window_metric"))
        last: dict[tuple, tuple[int, int]] = {}
        for value, _ts in self._records(topic):
            row = serde.decode(value)
            start = row["window_start"]
            start = epoch_millis(start) if isinstance(start, dt.datetime) else start
            if start >= cut_ms:
                continue
            k = (start, row["event_type"], row["category"], row["currency"])
            if k not in last or row["pane_index"] >= last[k][0]:
                last[k] = (row["pane_index"], row["event_count"])
        return sum(count for _, count in last.values())


def _percentiles(values: list[int]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3
    ordered = sorted(values)

    def at(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return at(0.50), at(0.99), at(0.999)


def verdict(system: System, m: Measured, expected: Expected) -> str:
    if not system.checks:
        return "ok" if m.counts["events"] == expected.records else f"WRONG: {m.counts['events']} of {expected.records}"
    wrong = [
        f"{name} {m.counts.get(name, 0)}!={want}"
        for name, want in expected.per_record.items()
        if m.counts.get(name, 0) != want
    ]
    if m.counts.get("unrouted", 0):
        wrong.append(f"unrouted {m.counts['unrouted']}!=0")
    return "ok" if not wrong else "WRONG: " + ", ".join(wrong)


def _share(got: int | None, want: int) -> str:
    return "-" if got is None else f"{got / max(1, want):.1%}"


Row = tuple[System, Measured | None, str]  # None: the system did not finish (its verdict says why)


def print_table(rows: list[Row], expected: Expected) -> None:
    rates = {s.name: m.rate for s, m, _ in rows if m is not None}
    base = rates.get(SYSTEMS["raw"].name) or next(iter(rates.values()), 1.0)
    avro = rates.get(SYSTEMS["avro"].name)  # not in every run: then its column is "-"
    print(
        f"\n{expected.records:,} records (6 partitions); expected: "
        + ", ".join(f"{k} {v:,}" for k, v in expected.per_record.items())
        + f", closed-window events {expected.window_events:,}"
    )
    head = (
        f"{'system':<26}{'events/s':>10}{'vs raw':>8}{'vs avro':>8}{'wall s':>8}{'CPU s/M':>9}{'RSS MiB':>9}"
        f"{'p50/p99/p999 ms @50%':>24}{'@80%':>20}{'windowed':>10}  per-record outputs"
    )
    print(head)
    for system, m, ok in rows:
        if m is None:
            print(
                f"{system.name:<26}{'-':>10}{'-':>8}{'-':>8}{'-':>8}{'-':>9}{'-':>9}{'-':>24}{'-':>20}{'-':>10}  {ok}"
            )
            continue
        lat = "".join(
            f"{'/'.join(f'{v:.0f}' for v in m.latency[load]):>{w}}" if load in m.latency else f"{'-':>{w}}"
            for load, w in ((50, 24), (80, 20))
        )
        cpu_per_m = m.cpu / max(1, m.records) * 1e6
        print(
            f"{system.name:<26}{m.rate:>10,.0f}{m.rate / base:>7.3f}x{f'{m.rate / avro:.3f}x' if avro else '-':>8}"
            f"{m.wall:>8.1f}{cpu_per_m:>9.0f}"
            f"{m.peak_rss / 2**20:>9.0f}{lat}{_share(m.window_events, expected.window_events):>10}  {ok}"
        )


def plot(rows: list[Row], path: Path) -> bool:
    """Throughput bars and latency percentiles of the systems that finished; False when none did."""
    rows = [(s, m, ok) for s, m, ok in rows if m is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.name for s, _, _ in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    bars = left.bar(names, [m.rate for _, m, _ in rows], color=["#888" if not s.checks else "#3a7" for s, _, _ in rows])
    left.bar_label(bars, fmt="{:,.0f}")
    left.set_yscale("log")
    left.set_ylabel("events/s (sustained, draining the topic; log)")
    left.set_title("Throughput")
    left.tick_params(axis="x", rotation=20)
    width = 0.13
    for i, (load, q) in enumerate(itertools.product((50, 80), range(3))):
        values = [m.latency.get(load, (float("nan"),) * 3)[q] for _, m, _ in rows]
        xs = [x + (i - 2.5) * width for x in range(len(rows))]
        right.bar(xs, values, width, label=f"p{('50', '99', '99.9')[q]} @{load}%")
    right.set_xticks(range(len(rows)), names, rotation=20)
    if any(m.latency for _, m, _ in rows):
        right.set_yscale("log")
    right.set_ylabel("end-to-end latency, ms (log)")
    right.set_title("Latency at 50% / 80% of each system's max rate")
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.end_to_end",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=500_000, help="records in the workload topic")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument("--latency-seconds", type=float, default=15.0, help="length of each paced feed (0: skip)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up on a system after this many seconds")
    parser.add_argument("--plot", type=Path, default=stack_path("bench", "end_to_end.png"))
    parser.add_argument(
        "--prism",
        type=Path,
        help="a Prism binary to run the systems on Prism on, for an A/B of a Prism patch (default: the stack's "
        "build; the stack's job server runs that build again when the bench ends)",
    )
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.systems.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; known: {', '.join(SYSTEMS)}")
    stack = StackSettings.from_env()
    if not port_open(stack.host, stack.kafka_port) or not port_open(stack.host, stack.registry_port):
        print("error: no broker/registry on the stack ports; start the local stack with `make up`", file=sys.stderr)
        return 2
    run_id = uuid.uuid4().hex[:6]
    bench = Bench(stack, run_id, args.timeout, args.prism)
    if any(SYSTEMS[k].uses_prism for k in keys) and bench.prism_pid is None:
        print("error: Prism's job server is not running; start the local stack with `make up`", file=sys.stderr)
        return 2
    input_topic = f"bench-{run_id}.raw"
    try:
        ensure_topics(stack.kafka_bootstrap, [input_topic], partitions=PARTITIONS)
        settings = load_settings(
            overrides=(f"kafka.bootstrap_servers={stack.kafka_bootstrap}", f"kafka.input_topic={input_topic}")
        )
        t0 = time.monotonic()
        records = publish_sample(settings, workload_config(args.events), bench.registry)
        expected = expected_outputs(records)
        print(f"workload: {len(records):,} records published to {input_topic} in {time.monotonic() - t0:.1f}s")
        rows = []
        for key in keys:
            system = SYSTEMS[key]
            print(f"[{system.name}] draining {len(records):,} records ...", flush=True)
            try:
                m, topics = bench.throughput(key, system, input_topic, expected.records)
            except (RuntimeError, TimeoutError) as failure:  # the others still run; the table says which failed
                print(f"[{system.name}] FAILED: {failure}", flush=True)
                rows.append((system, None, f"FAILED: {failure}"))
                continue
            if "window_metrics" in topics.outputs:
                m.window_events = bench.window_events(topics.outputs["window_metrics"], expected.window_cut_ms)
            ok = verdict(system, m, expected)
            print(f"[{system.name}] {m.rate:,.0f} events/s, {ok}", flush=True)
            if args.latency_seconds > 0:
                for load in (50, 80):
                    try:
                        m.latency[load] = bench.latency(key, system, m.rate * load / 100, args.latency_seconds, load)
                    except (RuntimeError, TimeoutError) as failure:
                        ok = f"latency @{load}% FAILED: {failure}"
                        print(f"[{system.name}] {ok}", flush=True)
                        break
                    print(f"[{system.name}] latency @{load}%: p50/p99/p999 {m.latency[load]} ms", flush=True)
            rows.append((system, m, ok))
        print_table(rows, expected)
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        print(f"plot: {args.plot}" if plot(rows, args.plot) else "no plot: no system finished")
        return 0 if all(ok == "ok" for _, _, ok in rows) else 1
    finally:
        deleted = delete_topics(stack.kafka_bootstrap, f"bench-{run_id}.")
        print(f"deleted {len(deleted)} benchmark topics")
        if args.prism and bench.prism_pid is not None:
            bench.fresh_job_server(None)  # the stack's own build again


if __name__ == "__main__":
    sys.exit(main())
