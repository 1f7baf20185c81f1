"""The example Airflow DAG loads in a real Airflow (its own venv: Airflow pins its own world) and calls the
launcher with arguments the launcher accepts.

Airflow is installed once into ``.stack/airflow/venv`` (about 1-3 minutes on a fresh machine, then cached).
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from runners.stack.process import STACK_DIR
from runners.templates.__main__ import build_parser
from runners.templates.spec import template

pytestmark = pytest.mark.integration
AIRFLOW = "apache-airflow==3.3.2"
VENV = STACK_DIR / "airflow" / "venv"
EXAMPLES = Path(__file__).resolve().parents[2] / "runners" / "templates" / "examples"
LOAD = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({
    "errors": {path: str(error) for path, error in bag.import_errors.items()},
    "dags": {
        dag_id: {
            "max_active_runs": dag.max_active_runs,
            "catchup": dag.catchup,
            "tasks": {task.task_id: task.bash_command for task in dag.tasks},
            "downstream": {task.task_id: sorted(task.downstream_task_ids) for task in dag.tasks},
        }
        for dag_id, dag in bag.dags.items()
    },
}))
"""


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if not marker.exists() or marker.read_text() != AIRFLOW:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", AIRFLOW], check=True, timeout=1200)
        marker.write_text(AIRFLOW)
    return python


def test_dagbag_loads_the_example_dag_and_its_commands_parse(airflow_python: Path, tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "CLICKSTREAM_HOME": "/opt/clickstream"}
    done = subprocess.run(
        [str(airflow_python), "-c", LOAD, str(EXAMPLES)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["errors"] == {}
    dag = loaded["dags"]["clickstream_template"]
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert dag["downstream"] == {"launch": ["status"], "status": []}
    for task_id, command in dag["tasks"].items():
        words = shlex.split(command)
        args = build_parser().parse_args(words[words.index("runners.templates") + 1 :])
        assert args.command == task_id and args.job_name == "clickstream-prod"
        if task_id == "launch":
            template(args.template).parse(args.param)
