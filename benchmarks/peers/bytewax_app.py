"""The pipeline's per-record work and 1-minute event-time windows on Bytewax 0.21 (benchmark peer, issue 12).

Run with the peer venv (``python -m benchmarks.peers.venvs bytewax``) and ``PYTHONPATH`` = the project root:

    python -m benchmarks.peers.bytewax_app --bootstrap HOST:PORT --registry-url URL --input-topic T --group G \\
        --topic events=T --topic orders=T --topic high_value_alerts=T --topic filtered=T \\
        --topic dead_letters=T --topic window_metrics=T [--workers N]

Raw bytes in, raw bytes out: ``benchmarks.peers.work`` decodes, validates, routes and encodes (Confluent Avro).
Every output record is stamped with the wall-clock time it is handed to the producer.
Windows: the valid events are keyed by (event_type, currency) and folded in ``TumblingWindower`` windows of 60 s
on an ``EventClock`` of their event time with ``wait_for_system_duration`` = 300 s (the grace): the watermark is
the newest event time seen minus 300 s, plus the system time passed since, so windows also close when input stops.
The clock is per key and each input partition is read by its own consumer at its own pace, so on a backlog a
partition that runs ahead makes the others' events late for the window (``windows.late``: counted, logged at stop);
a smaller ``--batch-size`` (Bytewax's default 1000 messages per partition poll) narrows that gap.
``--workers N`` runs N Timely workers (threads) in this one process; the input partitions are split among them.
Bytewax's Kafka source assigns partitions itself (one consumer per partition) and commits no offsets: ``--group`` is
accepted for a common CLI and unused. Its sink flushes the producer after every batch. On SIGTERM/SIGINT the input
ends (EOF): the dataflow completes, emitting the still-open windows, flushes and the process exits 0.
"""

import argparse
import datetime as dt
import logging
import sys
import threading
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSource
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.run import cli_main
from confluent_kafka import OFFSET_BEGINNING

from benchmarks.peers import cli
from benchmarks.peers.work import (
    GRACE_MS,
    WINDOW_MS,
    Output,
    Verdict,
    WindowAgg,
    WindowInput,
    WindowKey,
    Work,
    agg_add,
    agg_merge,
    now_ms,
)

logger = logging.getLogger("bytewax_app")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class _StoppablePartition(StatefulSourcePartition[Any, Any]):
    """A source partition that ends (EOF) once ``stop`` is set: the dataflow then completes normally."""

    def __init__(self, inner: StatefulSourcePartition[Any, Any], stop: threading.Event):
        self._inner = inner
        self._stop = stop

    def next_batch(self) -> list[Any]:
        if self._stop.is_set():
            raise StopIteration()
        return self._inner.next_batch()

    def next_awake(self) -> dt.datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class StoppableSource(FixedPartitionedSource[Any, Any]):
    """Bytewax's ``KafkaSource``, ending on ``stop`` (set by SIGTERM/SIGINT) instead of being interrupted."""

    def __init__(self, inner: KafkaSource, stop: threading.Event):
        self._inner = inner
        self._stop = stop

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        return _StoppablePartition(self._inner.build_part(step_id, for_part, resume_state), self._stop)


def build(
    work: Work,
    bootstrap: str,
    input_topic: str,
    stop: threading.Event,
    counters: dict[str, int],
    consumer_config: dict[str, str] | None = None,
    batch_size: int = 1000,
) -> Dataflow:
    flow = Dataflow("peer_bytewax")
    source = KafkaSource(
        bootstrap.split(","),
        [input_topic],
        starting_offset=OFFSET_BEGINNING,
        add_config=consumer_config,
        batch_size=batch_size,
    )
    messages_in = op.input("kafka_in", flow, StoppableSource(source, stop))

    verdicts = op.map("judge", messages_in, lambda m: work.verdict(m.key, m.value, m.topic, m.partition, m.offset))
    records = op.flat_map("outputs", verdicts, lambda verdict: verdict.outputs)

    def window_input(verdict: Verdict) -> WindowInput | None:
        return verdict.window

    keyed = op.key_on("by_window_key", op.filter_map("valid", verdicts, window_input), lambda w: w.key.text())
    clock = win.EventClock(
        lambda w: _EPOCH + dt.timedelta(milliseconds=w.event_time),
        wait_for_system_duration=dt.timedelta(milliseconds=GRACE_MS),
    )
    windower = win.TumblingWindower(length=dt.timedelta(milliseconds=WINDOW_MS), align_to=_EPOCH)
    windows = win.fold_window(
        "window",
        keyed,
        clock,
        windower,
        builder=WindowAgg,
        folder=lambda agg, w: agg_add(agg, w.amount_minor),
        merger=agg_merge,
        ordered=False,  # a count and a sum: no need to buffer and sort each window's events
    )

    def late(_step: str, _item: Any) -> None:
        counters["late_for_window"] += 1

    op.inspect("late_for_window", windows.late, late)

    def window_metric(item: tuple[str, tuple[int, WindowAgg]]) -> Output:
        key, (window_id, agg) = item
        return work.window_output(WindowKey.parse(key), window_id * WINDOW_MS, agg)

    metrics = op.map("window_metric", windows.down, window_metric)

    def to_kafka(output: Output) -> KafkaSinkMessage:
        return KafkaSinkMessage(output.key, output.value, topic=work.topics[output.name], timestamp=now_ms())

    messages = op.map("to_kafka", op.merge("all_outputs", records, metrics), to_kafka)
    kop.output("kafka_out", messages, brokers=bootstrap.split(","), topic=work.topics["events"])
    return flow


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="most messages read from one partition at a time (Bytewax's)"
    )


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args("python -m benchmarks.peers.bytewax_app", __doc__, argv, _extra)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli.check_broker(args)
    work = cli.make_work(args)
    counters = {"late_for_window": 0}
    stop = threading.Event()
    flow = build(work, args.bootstrap, args.input_topic, stop, counters, args.consumer_config, args.batch_size)
    # A KeyboardInterrupt raised inside a step would abort the dataflow: end the input instead, so it completes
    # (EOF closes the open windows, the sink flushes and closes).
    cli.install_stop_signals(stop.set)
    logger.info("running %s with %d worker(s) on %s", flow.flow_id, args.workers, args.input_topic)
    cli_main(flow, workers_per_process=args.workers)
    late = counters["late_for_window"]
    logger.info("stopped; %d valid events came too late for their window (not in window_metrics)", late)
    return 0


if __name__ == "__main__":
    sys.exit(main())
