"""The command line and start-up checks shared by the peer apps (``quix_app``, ``bytewax_app``).

``--bootstrap HOST:PORT --registry-url URL --input-topic T --group G --topic NAME=TOPIC ... [--workers N]``,
one ``--topic`` per output of ``benchmarks.peers.work.OUTPUTS``. Every topic must exist (the apps create none of
their inputs or outputs), and both the broker and the registry must answer, else the app exits 2 with one line.
"""

import argparse
import signal
import sys
from collections.abc import Callable

from benchmarks.peers.work import OUTPUTS, Work
from schemas.registry import RegistryUnavailableError

EXIT_UNREACHABLE = 2


def _topic(text: str) -> tuple[str, str]:
    name, sep, topic = text.partition("=")
    if not sep or not topic or name not in OUTPUTS:
        raise argparse.ArgumentTypeError(f"expected NAME=TOPIC with NAME one of {', '.join(OUTPUTS)}, got {text!r}")
    return name, topic


def _config(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a librdkafka property), got {text!r}")
    return key, value


def parse_args(
    prog: str, doc: str | None, argv: list[str] | None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT]")
    parser.add_argument("--registry-url", required=True, help="Confluent-compatible schema registry URL")
    parser.add_argument("--input-topic", required=True, help="raw events topic (read from the earliest offset)")
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument(
        "--topic", action="append", type=_topic, default=[], metavar="NAME=TOPIC", help=f"one per {', '.join(OUTPUTS)}"
    )
    parser.add_argument("--workers", type=int, default=1, help="parallelism (see the app's description)")
    parser.add_argument(
        "--consumer-config",
        action="append",
        type=_config,
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka consumer property, e.g. max.partition.fetch.bytes=16384 (repeatable)",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.topics = dict(args.topic)
    args.consumer_config = dict(args.consumer_config)
    missing = [name for name in OUTPUTS if name not in args.topics]
    if missing:
        parser.error(f"missing --topic for {', '.join(missing)}")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return args


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_UNREACHABLE)


def check_broker(args: argparse.Namespace, timeout: float = 10.0) -> None:
    """Exit 2 unless the broker answers and the input and output topics exist."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # Quiet librdkafka's own retry logging: the one-line error below says it.
    admin = AdminClient({"bootstrap.servers": args.bootstrap, "log_level": 0})
    try:
        known = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as err:
        fail(f"Kafka broker {args.bootstrap} is not reachable ({err.args[0] if err.args else err})")
    wanted = [args.input_topic, *args.topics.values()]
    absent = [topic for topic in wanted if topic not in known]
    if absent:
        fail(f"topic(s) {', '.join(absent)} do not exist on {args.bootstrap}; create them first")


def make_work(args: argparse.Namespace) -> Work:
    """The shared work, its output schemas registered; exit 2 if the registry does not answer."""
    try:
        return Work(args.registry_url, args.topics)
    except RegistryUnavailableError as err:
        fail(f"schema registry {args.registry_url} is not reachable ({err})")
        raise  # unreachable: fail() exits


def install_stop_signals(handler: Callable[[], None]) -> None:
    """Call ``handler`` on SIGTERM and SIGINT (frameworks without their own handling)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: handler())
