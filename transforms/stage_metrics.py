"""One naming scheme for every stage's Beam metrics: namespace ``clickstream``, name ``<stage>_<what>``.

On Flink these surface through Flink's metric system, so names must stay stable across releases.
"""

from apache_beam.metrics.metric import Metrics

NAMESPACE = "clickstream"


def counter(stage: str, what: str) -> Metrics.DelegatingCounter:
    return Metrics.counter(NAMESPACE, f"{stage}_{what}")


def distribution(stage: str, what: str) -> Metrics.DelegatingDistribution:
    return Metrics.distribution(NAMESPACE, f"{stage}_{what}")
