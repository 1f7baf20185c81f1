"""Beam's floor on Prism: the project's Kafka source straight into its Kafka sink, bytes untouched, nothing else.

The same runner, worker layout and Kafka IO as the pipeline, without any of its stages (no decode, windows,
state, enrichment or offset commits), so the end-to-end benchmark can show how much of the pipeline's cost is
Beam's per-bundle and per-element overhead on this runner rather than the pipeline's own work. Runs until
SIGTERM/SIGINT (then cancels the job), with the passthrough's command line.
"""

import argparse
import signal
import sys
import threading

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from kafkaio import ClientConfig, ReadConfig, ReadFromKafka, WriteToKafka
from runners.live import ENDED_STATES
from runners.prism import PrismJobServer
from runners.profiles import pipeline_args, runner_settings
from runners.stack.settings import StackSettings
from schemas.records import KafkaRecord, OutputRecord


def _forward(record: KafkaRecord) -> OutputRecord:
    return OutputRecord(record.key, record.value or b"")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.beam_passthrough", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry-url", help="unused (the passthroughs' common command line)")
    parser.add_argument("--input-topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topic", action="append", default=[], metavar="NAME=TOPIC", help="only events= is used")
    args = parser.parse_args(argv)
    out = dict(t.split("=", 1) for t in args.topic)["events"]
    client = ClientConfig({"bootstrap.servers": args.bootstrap})
    runner = runner_settings("prism", []).model_copy(
        update={"prism_job_endpoint": PrismJobServer(StackSettings.from_env()).endpoint}
    )
    pipeline = beam.Pipeline(options=PipelineOptions(pipeline_args(runner)))
    (
        pipeline
        | "Read" >> ReadFromKafka(client, ReadConfig(topic=args.input_topic, group_id=args.group))
        | "Forward" >> beam.Map(_forward).with_output_types(OutputRecord)
        | "Write" >> WriteToKafka(out, client)
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    result = pipeline.run()
    while result.state not in ENDED_STATES and not stop.wait(0.5):
        pass
    if result.state not in ENDED_STATES:
        result.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
