"""``python -m monitoring.report``: the last pipeline run as a PNG (throughput, p50/p99/p99.9 latency, lag), from
Prometheus, for a user without Grafana.

"The last run" is the last stretch of the look-back window in which Prometheus had a pipeline worker target
(``up{job="pipeline-workers"}``), widened by a little on each side so the lag before and after shows too.
"""

import argparse
import json
import sys
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display here
import matplotlib.pyplot as plt  # noqa: E402

from schemas import endpoints  # noqa: E402

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
Series = list[tuple[float, float]]

PANELS = (
    ("Throughput (records/s)", {"read": "sum(rate(clickstream_records_in_total[{w}]))",
                                "written": "sum(rate(clickstream_written_total[{w}]))"}),
    ("End-to-end latency (s)", {q: f"histogram_quantile({q}, sum by (le) "
                                   "(rate(clickstream_end_to_end_latency_seconds_bucket[{w}])))"
                                for q in ("0.5", "0.99", "0.999")}),
    ("Consumer lag (messages)", {"lag": "sum(kafka_consumergroup_lag)"}),
)  # fmt: skip


def query_range(prometheus: str, promql: str, start: float, end: float, step: float) -> Series:
    """The first series of a range query as (time, value) pairs; NaN values are dropped."""
    params = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
    with _OPENER.open(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as response:
        result = json.load(response)["data"]["result"]
    if not result:
        return []
    return [(float(t), float(v)) for t, v in result[0]["values"] if v not in ("NaN", "+Inf", "-Inf")]


def last_run(prometheus: str, now: float, lookback_s: float, step: float) -> tuple[float, float] | None:
    """(start, end) of the last contiguous stretch with a worker target, or None if there was none."""
    present = [t for t, _ in query_range(prometheus, 'count(up{job="pipeline-workers"})', now - lookback_s, now, step)]
    if not present:
        return None
    end = start = present[-1]
    for t in reversed(present[:-1]):
        if start - t > 3 * step:
            break
        start = t
    return start, end


def render(prometheus: str, out: Path, lookback_s: float = 3600.0, step: float = 2.0) -> Path:
    """Write the PNG of the last run to ``out``; raises ``LookupError`` when no run is in the window."""
    now = datetime.now().timestamp()
    run = last_run(prometheus, now, lookback_s, step)
    if run is None:
        raise LookupError(f"no pipeline worker was scraped by {prometheus} in the last {lookback_s:.0f}s")
    start, end = run[0] - 15, min(now, run[1] + 15)
    window = f"{max(10, int(4 * step))}s"
    figure, axes = plt.subplots(len(PANELS), 1, figsize=(10, 9), sharex=True)
    for axis, (title, queries) in zip(axes, PANELS, strict=True):
        for label, promql in queries.items():
            points = query_range(prometheus, promql.format(w=window), start, end, step)
            if points:
                axis.plot([datetime.fromtimestamp(t) for t, _ in points], [v for _, v in points], label=label)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left")
    axes[1].set_yscale("log")  # replays of old records sit minutes to an hour above a sub-second p50
    began = datetime.fromtimestamp(run[0]).strftime("%Y-%m-%d %H:%M:%S")
    figure.suptitle(f"Last pipeline run: {began}, {run[1] - run[0]:.0f}s with a worker ({prometheus})")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.report", description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", default=f"http://{endpoints.HOST}:{endpoints.PROMETHEUS_PORT}")
    parser.add_argument("--out", type=Path, default=Path("pipeline-run.png"), help="PNG to write")
    parser.add_argument("--lookback", type=float, default=3600.0, help="seconds to look back for the last run")
    args = parser.parse_args(argv)
    try:
        print(render(args.prometheus.rstrip("/"), args.out, args.lookback))
    except (LookupError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
