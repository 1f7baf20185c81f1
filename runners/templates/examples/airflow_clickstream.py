"""Airflow DAG: keep the clickstream template's job running on Flink, launched idempotently every hour.

Each run calls the launcher: a job of that name that already runs is reported (exit 0, no duplicate), a
missing one is started, and the status task fails the run unless the job runs. Any non-zero exit fails
the task (2 bad parameters, 3 launch failed, 4 timed out: the launcher's stderr in the task log says which)
and is retried twice. Copy this file into the DAG folder and set CLICKSTREAM_HOME to the checkout.
"""

import os

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

HOME = os.environ.get("CLICKSTREAM_HOME", "/opt/clickstream")
LAUNCHER = f"cd {HOME} && .venv/bin/python -m runners.templates"
JOB = "--runner flink --job-name clickstream-prod --set runner.flink_master=flink-jobmanager:8081"
PARAMETERS = " ".join(
    f"--param {pair}"
    for pair in (
        "input_topic=clickstream.events.raw",
        "window_size_seconds=60",
        "allowed_lateness_seconds=300",
        "parallelism=4",
        "checkpoint_interval_ms=30000",
    )
)

with DAG(
    dag_id="clickstream_template",
    description="Launch (or confirm) the clickstream pipeline on Flink",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # launches of one job name never overlap
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2)},
    tags=["clickstream", "beam"],
) as dag:
    launch = BashOperator(
        task_id="launch",
        bash_command=f"{LAUNCHER} launch clickstream {JOB} {PARAMETERS} --timeout 600",
        do_xcom_push=True,  # the launcher's one JSON line: job id, state, UI URL
    )
    status = BashOperator(task_id="status", bash_command=f"{LAUNCHER} status {JOB}", do_xcom_push=True)
    launch >> status
