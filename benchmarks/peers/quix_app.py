"""The pipeline's per-record work and 1-minute event-time windows on Quix Streams 3.x (benchmark peer, issue 12).

Run with the peer venv (``python -m benchmarks.peers.venvs quix``) and ``PYTHONPATH`` = the project root:

    python -m benchmarks.peers.quix_app --bootstrap HOST:PORT --registry-url URL --input-topic T --group G \\
        --topic events=T --topic orders=T --topic high_value_alerts=T --topic filtered=T \\
        --topic dead_letters=T --topic window_metrics=T

Raw bytes in, raw bytes out: ``benchmarks.peers.work`` decodes, validates, routes and encodes (Confluent Avro).
Every output record is stamped with the wall-clock time it is produced at (Quix would copy the input's).
Windows: the valid events are re-keyed by (event_type, currency) with ``group_by`` (Quix's repartition topic,
created by the app with the input's partition count, plus a changelog topic for the window state unless
``--no-changelog-topics``), timestamped with their event time, and aggregated in tumbling windows of 60 s with
300 s of grace; ``.final(closing_strategy="partition")`` emits a window once a newer event of the same partition
passes its end + grace, so the last windows of a finished input stay open until more data comes.
Quix keeps no watermark across input partitions: reading a backlog (partitions consumed one fetch after another)
makes most events late for the windows of their repartition partition (counted and logged at stop, as the
``on_late`` callback suppresses Quix's per-event warning); live input at its arrival pace windows almost every event.
``--workers`` is ignored: one Application is one consumer; scale out by starting more processes (same group).
Stops on SIGTERM/SIGINT (Quix's own handlers): flushes the producer, commits, exits 0.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from quixstreams import Application, message_context
from quixstreams.models.serializers import SerializationContext, Serializer
from quixstreams.models.topics import TopicAdmin, TopicManager

from benchmarks.peers import cli
from benchmarks.peers.work import GRACE_MS, WINDOW_MS, Output, Verdict, WindowAgg, WindowKey, Work, agg_add, now_ms

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("quix_app")


class OutputValue(Serializer):
    """Produces an ``Output``'s already framed value (its key goes through ``to_topic(key=...)``)."""

    def __call__(self, value: Output, ctx: SerializationContext) -> bytes:
        return value.value


class PrefixedTopicManager(TopicManager):
    """Quix's topic manager with a prefix on its internal (repartition, changelog) topic names."""

    prefix = ""

    def _internal_name(self, topic_type: str, topic_name: str | None, suffix: str) -> str:
        return self.prefix + super()._internal_name(topic_type, topic_name, suffix)


def build(app: Application, work: Work, input_topic: str) -> dict[str, int]:
    """The dataframe: per-record outputs to their topics, valid events through the windows. Returns counters."""
    counters = {"late_for_window": 0}
    raw = app.topic(input_topic, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {
        name: app.topic(topic, key_serializer="bytes", value_serializer=OutputValue())
        for name, topic in work.topics.items()
    }

    def judge(value: bytes | None, key: bytes | None, _timestamp: int, _headers: Any) -> Verdict:
        ctx = message_context()
        return work.verdict(key, value, ctx.topic, ctx.partition, ctx.offset)

    def wall_clock(*_: Any) -> int:
        return now_ms()

    sdf = app.dataframe(raw).apply(judge, metadata=True)

    records = sdf.apply(lambda verdict: verdict.outputs, expand=True).set_timestamp(wall_clock)
    records.to_topic(lambda value, *_: outputs[value.name], key=lambda output: output.key)

    def on_late(*_: Any) -> bool:
        counters["late_for_window"] += 1
        return False  # counted, not logged per event

    def window_input(verdict: Verdict) -> dict[str, Any]:  # JSON: the repartition topic's value serializer
        window = verdict.window
        return {"k": window.key.text(), "t": window.event_time, "a": window.amount_minor}

    def window_metric(window: dict[str, Any], key: str, _timestamp: int, _headers: Any) -> Output:
        return work.window_output(WindowKey.parse(key), window["start"], window["value"])

    windowed = (
        sdf.filter(lambda verdict: verdict.window is not None)
        .apply(window_input)
        .set_timestamp(lambda value, *_: value["t"])
        .group_by(lambda value: value["k"], name="window_key")
        .tumbling_window(duration_ms=WINDOW_MS, grace_ms=GRACE_MS, on_late=on_late)
        .reduce(
            reducer=lambda agg, value: list(agg_add(agg, value["a"])),
            initializer=lambda value: list(agg_add(WindowAgg(), value["a"])),
        )
        .final(closing_strategy="partition")
        .apply(window_metric, metadata=True)
        .set_timestamp(wall_clock)
    )
    windowed.to_topic(outputs["window_metrics"], key=lambda output: output.key)
    return counters


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=ROOT / ".stack" / "bench" / "quix" / "state",
        help="RocksDB state directory (default .stack/bench/quix/state)",
    )
    parser.add_argument(
        "--internal-topic-prefix",
        default="",
        help="prefix for the repartition/changelog topics Quix creates (default none: Quix's own names)",
    )
    parser.add_argument(
        "--no-changelog-topics",
        action="store_true",
        help="keep window state only in local RocksDB (no changelog topic)",
    )


def main(argv: list[str] | None = None) -> int:
    args = cli.parse_args("python -m benchmarks.peers.quix_app", __doc__, argv, _extra)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli.check_broker(args)
    work = cli.make_work(args)
    topic_manager = None
    if args.internal_topic_prefix:
        admin = TopicAdmin(broker_address=args.bootstrap)
        topic_manager = PrefixedTopicManager(topic_admin=admin, consumer_group=args.group)
        topic_manager.prefix = args.internal_topic_prefix
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,  # Quix adds the consumer group: <state dir>/<group>/...
        consumer_extra_config=args.consumer_config or None,
        use_changelog_topics=not args.no_changelog_topics,
        topic_manager=topic_manager,
        loglevel="INFO",
    )
    counters = build(app, work, args.input_topic)
    app.run()
    late = counters["late_for_window"]
    logger.info("stopped; %d valid events came too late for their window (not in window_metrics)", late)
    return 0


if __name__ == "__main__":
    sys.exit(main())
