"""Beam's own metrics of a job, read back from the runner's job service once the job is over.

These are the counters and distributions the DoFns report through Beam (``transforms.stage_metrics``,
``kafkaio``), summed over steps. The workers also count the same events with prometheus-client
(``telemetry.metrics``) for Prometheus; the run summary prints Beam's view, and the live tests check that
both agree. Committed values are used where the runner reports them (Prism does), attempted ones otherwise.
"""

from collections import Counter
from typing import Any, NamedTuple

from apache_beam.runners.runner import PipelineResult

NAMESPACES = ("clickstream", "kafkaio")


class BeamMetrics(NamedTuple):
    counters: Counter  # "<namespace>:<name>" -> value
    distributions: dict[str, Any]  # "<namespace>:<name>" -> DistributionData (count, sum, min, max)


def _value(result: Any) -> Any:
    return result.committed if result.committed is not None else result.attempted


def read_beam_metrics(result: PipelineResult) -> BeamMetrics:
    """The job's counters and distributions of the project's namespaces."""
    query = result.metrics().query()
    counters: Counter = Counter()
    distributions: dict[str, Any] = {}
    for found in query["counters"]:
        metric = found.key.metric
        if metric.namespace in NAMESPACES:
            counters[f"{metric.namespace}:{metric.name}"] += _value(found) or 0
    for found in query["distributions"]:
        metric = found.key.metric
        value = _value(found)
        if metric.namespace in NAMESPACES and value is not None:
            key = f"{metric.namespace}:{metric.name}"
            distributions[key] = value if key not in distributions else distributions[key].combine(value)
    return BeamMetrics(counters, distributions)


def render(metrics: BeamMetrics) -> str:
    """The summary's block: one line per counter, then count/mean/min/max per distribution."""
    lines = ["Beam metrics (from the job service):"]
    lines += [f"  {name:<52}{value:>8}" for name, value in sorted(metrics.counters.items())]
    for name, data in sorted(metrics.distributions.items()):
        mean = data.sum / data.count if data.count else 0.0
        lines.append(f"  {name:<52} count={data.count} mean={mean:.1f} min={data.min} max={data.max}")
    return "\n".join(lines)
