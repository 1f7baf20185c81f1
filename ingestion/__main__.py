"""``python -m ingestion serve|replay|generate``: publish schema-checked events to Kafka.

Exit code 0 only when every event handed to Kafka was acknowledged; rejected events are not
failures (they get a reason: in the HTTP response or the --rejects file) but are counted.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from ingestion.contract import Unparseable
from ingestion.generator import GeneratorConfig, events
from ingestion.limiter import AimdRateLimiter, LimiterSettings
from ingestion.metrics import IngestionMetrics
from ingestion.publisher import ProducerSettings, Publisher
from ingestion.service import ACK_TIMEOUT_SECONDS, BODY_TIMEOUT_SECONDS, IngestionService
from ingestion.signals import ConsumerLag, PrometheusLatency
from schemas import endpoints
from schemas.records import to_avro
from schemas.registry import ConfluentRegistry
from telemetry.endpoint import register_target

_LOG = logging.getLogger("ingestion")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m ingestion", description=__doc__)
    kafka = parser.add_argument_group("Kafka and registry")
    kafka.add_argument(
        "--bootstrap", default=env("KAFKA_BOOTSTRAP", endpoints.KAFKA_BOOTSTRAP), help="[$KAFKA_BOOTSTRAP]"
    )
    kafka.add_argument(
        "--registry-url", default=env("SCHEMA_REGISTRY_URL", endpoints.REGISTRY_URL), help="[$SCHEMA_REGISTRY_URL]"
    )
    kafka.add_argument("--topic", default=endpoints.RAW_TOPIC, help="topic to publish to")
    tuning = parser.add_argument_group("producer tuning (defaults: see ingestion/publisher.py)")
    defaults = ProducerSettings()
    tuning.add_argument("--linger-ms", type=int, default=defaults.linger_ms)
    tuning.add_argument("--batch-size", type=int, default=defaults.batch_size)
    tuning.add_argument(
        "--compression", default=defaults.compression, choices=["none", "gzip", "snappy", "lz4", "zstd"]
    )
    tuning.add_argument(
        "--delivery-timeout-ms", type=int, default=defaults.delivery_timeout_ms, help="give up on a message after this"
    )
    rate = parser.add_argument_group("rate limiting")
    rate.add_argument("--rate", type=float, default=None, help="events/s (the ceiling when --adaptive)")
    rate.add_argument(
        "--adaptive",
        action="store_true",
        help="AIMD: slow down when the pipeline lags (and recover when it catches up)",
    )
    rate.add_argument("--lag-group", default=endpoints.PIPELINE_GROUP, help="consumer group whose lag is the signal")
    rate.add_argument(
        "--max-lag", type=int, default=LimiterSettings().max_lag, help="lag (messages) that means 'behind'"
    )
    rate.add_argument("--min-rate", type=float, default=LimiterSettings().min_rate, help="floor of the adaptive rate")
    rate.add_argument("--prometheus-url", help="also use the pipeline's end-to-end latency from this Prometheus")
    rate.add_argument(
        "--latency-query",
        default="histogram_quantile(0.99, sum by (le) (rate(clickstream_end_to_end_latency_seconds_bucket[1m])))",
        help="PromQL giving the latency in seconds",
    )
    rate.add_argument("--max-latency", type=float, default=LimiterSettings().max_latency_seconds, help="seconds")
    out = parser.add_argument_group("output")
    out.add_argument("--rejects", type=Path, help="append rejected events with their reasons here (JSON lines)")
    out.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (replay/generate; 0 = off)")
    out.add_argument(
        "--prometheus-targets",
        type=Path,
        help="write a file_sd entry for this process's /metrics into this directory (removed at exit), "
        "so a Prometheus watching it scrapes the service only while it runs",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="HTTP endpoint: POST /v1/events with a JSON batch; GET /metrics")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=endpoints.INGESTION_PORT)
    serve.add_argument(
        "--ack-timeout",
        type=float,
        default=ACK_TIMEOUT_SECONDS,
        help="seconds an answer waits for Kafka's acknowledgements (also the producer's delivery timeout, so an "
        "event answered not_acknowledged has been given up)",
    )
    serve.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT_SECONDS, help="408 after this")
    replay = sub.add_parser("replay", help="publish a JSON-lines file (one event per line)")
    replay.add_argument("file", type=Path)
    generate = sub.add_parser("generate", help="publish synthetic events (seeded, deterministic)")
    generate.add_argument("--events", type=int, default=10_000)
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--invalid-share", type=float, default=GeneratorConfig.invalid_share)
    generate.add_argument("--max-skew-seconds", type=int, default=GeneratorConfig.max_skew_seconds)
    return parser


def _limiter(args: argparse.Namespace, metrics: IngestionMetrics, client_config: dict) -> AimdRateLimiter | None:
    if args.rate is None and not args.adaptive:
        return None
    ceiling = args.rate or LimiterSettings().max_rate
    if not args.adaptive:
        settings = LimiterSettings(initial_rate=ceiling, min_rate=min(ceiling, args.min_rate), max_rate=ceiling)
        return AimdRateLimiter(settings, {}, on_change=metrics.rate_limit.set)
    settings = LimiterSettings(
        initial_rate=min(ceiling, LimiterSettings().initial_rate),
        min_rate=min(ceiling, args.min_rate),
        max_rate=ceiling,
        max_lag=args.max_lag,
        max_latency_seconds=args.max_latency,
    )
    signals: dict[str, Any] = {"lag": (ConsumerLag(client_config, args.lag_group, args.topic), float(args.max_lag))}
    if args.prometheus_url:
        signals["latency"] = (PrometheusLatency(args.prometheus_url, args.latency_query), args.max_latency)
    return AimdRateLimiter(settings, signals, on_change=metrics.rate_limit.set)


def _replay_lines(path: Path) -> Iterator[Any]:
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as err:
                yield Unparseable(line, f"line {number}: {err}")


def _generated(args: argparse.Namespace) -> Iterator[Any]:
    now_ms = int(time.time() * 1000)
    config = GeneratorConfig(
        seed=args.seed,
        events=args.events,
        start_ms=now_ms - GeneratorConfig.duration_seconds * 1000,
        invalid_share=args.invalid_share,
        max_skew_seconds=args.max_skew_seconds,
    )
    for drawn in events(config, now_ms):
        record = to_avro(drawn.event)
        if drawn.kind == "malformed":  # a broken producer: a field of the wrong type
            record["amount_minor"] = "twelve"
        yield record


class _Progress(threading.Thread):
    """One line a second on stderr: sent, acknowledged, failed, rejected, rate, limit, queue."""

    def __init__(self, service: IngestionService, limiter: AimdRateLimiter | None):
        super().__init__(daemon=True, name="progress")
        self._service, self._limiter = service, limiter
        self.stop = threading.Event()

    def line(self, elapsed: float) -> str:
        p = self._service.publisher
        limit = f" limit {self._limiter.rate:,.0f}/s" if self._limiter else ""
        return (
            f"sent {p.sent:,} acked {p.acked:,} failed {p.failed:,} rejected {self._service.rejected:,}"
            f" | {p.sent / max(elapsed, 1e-9):,.0f} ev/s{limit} | in doubt {p.in_doubt:,}"
        )

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.wait(1.0):
            print(self.line(time.monotonic() - started), file=sys.stderr, flush=True)


def _pump(service: IngestionService, source: Iterable[Any], name: str, stopping: threading.Event) -> None:
    for index, raw in enumerate(source):
        if stopping.is_set():
            _LOG.warning("stopping: %d events read from %s before the signal", index, name)
            return
        service.submit(raw, name, index)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    client_config = {"bootstrap.servers": args.bootstrap}
    metrics = IngestionMetrics()
    limiter = _limiter(args, metrics, client_config)
    delivery_timeout_ms = args.delivery_timeout_ms
    if args.command == "serve":  # librdkafka gives up before the answer is sent: "not acknowledged" is final
        delivery_timeout_ms = min(delivery_timeout_ms, int(args.ack_timeout * 1000))
    settings = ProducerSettings(
        linger_ms=args.linger_ms,
        batch_size=args.batch_size,
        compression=args.compression,
        delivery_timeout_ms=delivery_timeout_ms,
    )
    publisher = Publisher(client_config, args.topic, ConfluentRegistry(args.registry_url), settings, metrics, limiter)
    service = IngestionService(publisher, metrics, rejects_path=args.rejects)
    progress = _Progress(service, limiter)
    started = time.monotonic()
    stopping = threading.Event()
    # Ours before uvicorn's: uvicorn restores these after its graceful shutdown and re-raises the signal,
    # which then only sets the flag instead of killing the process before the producer is flushed below.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    if args.command == "serve":
        import uvicorn

        from ingestion.http import create_app

        if args.prometheus_targets:
            register_target(args.prometheus_targets, "ingestion", f"{args.host}:{args.port}", {})
        # The handler waits a little longer than librdkafka's timeout, so every report arrives before the answer.
        app = create_app(service, ack_timeout=args.ack_timeout + 1.0, body_timeout=args.body_timeout)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    else:
        if args.metrics_port:
            start_http_server(args.metrics_port, addr="127.0.0.1", registry=metrics.registry)
            if args.prometheus_targets:
                register_target(args.prometheus_targets, "ingestion", f"127.0.0.1:{args.metrics_port}", {})
        progress.start()
        source = _replay_lines(args.file) if args.command == "replay" else _generated(args)
        _pump(service, source, args.command, stopping)
    in_doubt = service.close()
    progress.stop.set()
    print("done: " + progress.line(time.monotonic() - started), file=sys.stderr, flush=True)
    ok = in_doubt == 0 and publisher.failed == 0
    if not ok:
        print(f"error: {publisher.failed} events failed, {in_doubt} still unacknowledged", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
