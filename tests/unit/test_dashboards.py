"""Grafana dashboards (monitoring/grafana): provisioning-ready JSON whose every PromQL expression parses.

Grafana is not installable here, so the checks are structural (what Grafana's provisioning needs and what makes a
dashboard readable: unique ids, a 24-column grid without overlaps, a datasource and a query on every panel) plus
Prometheus' own parser: every expression, with Grafana's variables replaced by concrete values, goes into a
temporary rules file that ``promtool check rules`` must accept. The live counterpart is
tests/integration/test_dashboards_live.py.
"""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from runners.stack.prometheus import promtool

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "monitoring" / "grafana"
DASHBOARDS_DIR = GRAFANA / "dashboards"
DASHBOARD_FILES = ("overview.json", "flink-job.json")
PROVISIONING = GRAFANA / "provisioning"
GRID_COLUMNS = 24
PANEL_TYPES = {"timeseries", "stat"}
DATASOURCE_VARIABLE = "DS_PROMETHEUS"

#: Grafana's built-in variables, replaced by what Grafana would use at a 15 s scrape interval.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

#: Metric names each dashboard must chart (the brief of these dashboards; a dropped panel fails here).
REQUIRED_METRICS = {
    "overview.json": {
        "ingestion_events_published_total",
        "clickstream_records_in_total",
        "clickstream_written_total",
        "ingestion_publish_latency_seconds_bucket",
        "clickstream_end_to_end_latency_seconds_bucket",
        "kafka_consumergroup_lag",
        "clickstream_dead_letters_total",
        "ingestion_events_rejected_total",
        "ingestion_rate_limit_events_per_second",
    },
    "flink-job.json": {
        "flink_jobmanager_job_lastCheckpointDuration",
        "flink_jobmanager_job_lastCheckpointSize",
        "flink_jobmanager_job_numberOfFailedCheckpoints",
        "flink_jobmanager_job_numberOfCompletedCheckpoints",
        "flink_taskmanager_job_task_backPressuredTimeMsPerSecond",
        "flink_taskmanager_job_task_busyTimeMsPerSecond",
        "flink_taskmanager_job_task_operator_numRecordsInPerSecond",
        "flink_taskmanager_job_task_operator_numRecordsOutPerSecond",
        "flink_jobmanager_job_numRestarts",
        "flink_jobmanager_job_uptime",
    },
}


def load_dashboard(name: str) -> dict[str, Any]:
    """One dashboard file as Grafana's provisioning reads it."""
    return json.loads((DASHBOARDS_DIR / name).read_text())


def datasource_uid() -> str:
    """The uid of the Prometheus datasource that datasources.yml provisions."""
    config = yaml.safe_load((PROVISIONING / "datasources.yml").read_text())
    (source,) = [s for s in config["datasources"] if s["type"] == "prometheus"]
    return source["uid"]


def concrete(expr: str, dashboard: dict[str, Any], rate_interval: str = BUILTINS["__rate_interval"]) -> str:
    """``expr`` with Grafana's variables replaced: built-ins by durations, query variables by their "All" value.

    Raises ``KeyError`` for a variable the dashboard does not define, so a typo cannot slip through as text.
    """
    values = {**BUILTINS, "__rate_interval": rate_interval}
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] in ("query", "custom"):
            values[variable["name"]] = variable.get("allValue") or ".*"

    def replace(match: re.Match) -> str:
        return values[match.group(1) or match.group(2)]

    return _VARIABLE.sub(replace, expr)


def dashboard_expressions(rate_interval: str = BUILTINS["__rate_interval"]) -> list[tuple[str, str, str]]:
    """Every target of every panel as ``(file, "<panel title>/<refId>", concrete PromQL)``."""
    found = []
    for name in DASHBOARD_FILES:
        dashboard = load_dashboard(name)
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = concrete(target["expr"], dashboard, rate_interval)
                found.append((name, f"{panel['title']}/{target['refId']}", expr))
    return found


def check_expressions(expressions: list[str], tmp_path: Path) -> tuple[int, str]:
    """``promtool check rules`` on a file recording every expression; returns (returncode, output)."""
    rules = [{"record": f"dashboard:expr_{i}:check", "expr": expr} for i, expr in enumerate(expressions)]
    path = tmp_path / "dashboard-expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, width=1000))
    result = promtool("check", "rules", str(path))
    return result.returncode, result.stdout + result.stderr


def overlapping(panels: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Pairs of panel ids whose grid rectangles intersect."""
    pairs = []
    for i, a in enumerate(panels):
        for b in panels[i + 1 :]:
            ga, gb = a["gridPos"], b["gridPos"]
            if (
                ga["x"] < gb["x"] + gb["w"]
                and gb["x"] < ga["x"] + ga["w"]
                and ga["y"] < gb["y"] + gb["h"]
                and gb["y"] < ga["y"] + ga["h"]
            ):
                pairs.append((a["id"], b["id"]))
    return pairs


@pytest.fixture(params=DASHBOARD_FILES)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_dashboard(request.param)


def test_dashboards_are_provisioning_ready(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]), dashboard["uid"]
    assert dashboard["title"] and "id" not in dashboard  # a fixed id would clash with Grafana's own
    assert dashboard["panels"]


def test_dashboard_uids_and_titles_are_unique() -> None:
    dashboards = [load_dashboard(name) for name in DASHBOARD_FILES]
    assert len({d["uid"] for d in dashboards}) == len({d["title"] for d in dashboards}) == len(DASHBOARD_FILES)


def test_panels_have_unique_ids_titles_and_queries(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), ids
    for panel in dashboard["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"].strip(), panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{DATASOURCE_VARIABLE}}}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), (panel["title"], target["refId"])
            assert target["datasource"] == panel["datasource"], (panel["title"], target["refId"])


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
    assert overlapping(dashboard["panels"]) == []


def test_overlap_check_finds_an_overlap() -> None:
    panels = [
        {"id": 1, "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}},
        {"id": 2, "gridPos": {"x": 12, "y": 0, "w": 12, "h": 8}},  # touches 1's edge: fine
        {"id": 3, "gridPos": {"x": 11, "y": 7, "w": 2, "h": 2}},  # covers a corner of 1 and of 2
    ]
    assert overlapping(panels) == [(1, 3), (2, 3)]


def test_datasource_variable_defaults_to_the_provisioned_uid(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables[DATASOURCE_VARIABLE]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    assert source["current"]["value"] == datasource_uid()
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == f"${{{DATASOURCE_VARIABLE}}}", variable["name"]


def test_provisioning_points_at_the_dashboards_folder() -> None:
    config = yaml.safe_load((PROVISIONING / "dashboards.yml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    path = Path(provider["options"]["path"].replace("${CLICKSTREAM_REPO}", str(REPO)))
    assert path.resolve() == DASHBOARDS_DIR.resolve()
    assert sorted(p.name for p in path.glob("*.json")) == sorted(DASHBOARD_FILES)
    datasources = yaml.safe_load((PROVISIONING / "datasources.yml").read_text())
    assert datasources["apiVersion"] == 1
    assert datasources["datasources"][0]["url"].startswith("http://127.0.0.1:")  # the stack binds loopback only


def test_every_required_metric_is_charted() -> None:
    for name, metrics in REQUIRED_METRICS.items():
        text = " ".join(t["expr"] for p in load_dashboard(name)["panels"] for t in p["targets"])
        charted = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
        assert metrics - charted == set(), name


def test_variables_are_all_defined_and_replaced() -> None:
    for _, where, expr in dashboard_expressions():
        assert "$" not in expr, (where, expr)
    with pytest.raises(KeyError):
        concrete('up{job=~"$undefined_variable"}', load_dashboard("overview.json"))


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 30, len(expressions)
    code, output = check_expressions([expr for _, _, expr in expressions], tmp_path)
    assert code == 0, output
    assert f"SUCCESS: {len(expressions)} rules found" in output, output


def test_a_broken_expression_fails_the_promtool_check(tmp_path: Path) -> None:
    good = [expr for _, _, expr in dashboard_expressions()]
    broken = "histogram_quantile(0.99, sum by (le) (rate(ingestion_publish_latency_seconds_bucket[1m]))"  # one ")"
    code, output = check_expressions([*good, broken], tmp_path)
    assert code != 0
    assert "FAILED" in output or "error" in output.lower(), output
    # An unsubstituted Grafana variable is not PromQL either: the substitution step is what makes the check pass.
    code, _ = check_expressions(["sum(rate(ingestion_events_published_total[$__rate_interval]))"], tmp_path)
    assert code != 0
