"""The end-to-end benchmark's own arithmetic: what the workload must produce, the process accounting and the
profile summary (the runs themselves are in tests/integration/test_bench_end_to_end.py)."""

import subprocess
import sys
from collections import Counter

from benchmarks.measure import ResourceSampler, process_tree
from benchmarks.profile_pipeline import summarize
from benchmarks.workload import ROUTED_KINDS, expected_outputs, workload_config
from ingestion.generator import generate
from schemas.registry import InMemoryRegistry
from schemas.rules import ValidationConfig, rejection


def test_every_record_has_exactly_one_per_record_output_in_the_expectation():
    records = generate(workload_config(3000), InMemoryRegistry())
    expected = expected_outputs(records)
    kinds = Counter(r.kind for r in records)
    assert expected.per_record_total() == expected.records == 3000
    assert expected.per_record["events"] == sum(kinds[k] for k in ROUTED_KINDS)
    assert 0 < expected.per_record["high_value_alerts"] < expected.per_record["orders"] < expected.per_record["events"]
    assert 0 < expected.window_events < expected.per_record["events"]
    assert kinds["duplicate"] == 0  # not every peer deduplicates


def test_the_workloads_invalid_events_stay_invalid_for_a_day_of_benchmarking():
    # The rules compare event times with the wall clock; a bench of several systems runs for hours.
    now_ms = 1_800_000_000_000
    records = generate(workload_config(3000), InMemoryRegistry(), now_ms=now_ms)
    invalid = [r.event for r in records if r.kind == "invalid"]
    later = [rejection(e, ValidationConfig(), now_ms + 24 * 3_600_000) for e in invalid]
    assert [code for code, _ in filter(None, later)].count("event_time_in_future") > 10
    assert None not in later


def test_the_sampler_counts_the_cpu_of_a_child_process():
    # Busy for one second of its own CPU time, however loaded the machine is.
    busy = subprocess.Popen([sys.executable, "-c", "import time\nwhile time.process_time() < 1.0: pass"])
    sampler = ResourceSampler([busy.pid], interval=0.1).start()
    assert busy.pid in process_tree([busy.pid])
    busy.wait()
    cpu = sampler.stop()
    assert 0.5 < cpu < 1.5, cpu
    assert sampler.peak_rss > 1 << 20


def test_profile_samples_are_summed_per_stage_inclusive_and_per_kind_of_code(tmp_path):
    raw = tmp_path / "raw.txt"
    decode = "process (/repo/transforms/decode.py:80)"
    raw.write_text(
        f"run (threading.py:1);{decode};decode (site-packages/fastavro/_read.py:10) 3\n"
        f"run (threading.py:1);{decode};loads (apache_beam/coders/coder_impl.py:5) 1\n"
        "run (threading.py:1);process (/repo/kafkaio/sink.py:79) 4\n"
    )
    total, stages, kinds = summarize(raw)
    assert total == 8
    assert stages == Counter({"decode": 4, "write (Kafka sink)": 4})
    assert kinds["fastavro (Avro)"] == 3 and kinds["Beam coders"] == 1


def test_a_system_that_did_not_finish_is_a_failed_row_and_the_others_still_print_and_plot(tmp_path, capsys):
    from benchmarks.end_to_end import SYSTEMS, Measured, plot, print_table
    from benchmarks.workload import Expected

    expected = Expected(1000, {"events": 900, "filtered": 50, "dead_letters": 50}, 0, 800)
    finished = Measured(records=1000, seconds=2.0, wall=3.0, cpu=1.0, peak_rss=2**20, counts={"events": 1000})
    rows = [(SYSTEMS["raw"], finished, "ok"), (SYSTEMS["beam"], None, "FAILED: 10/1000 records written after 5s")]
    print_table(rows, expected)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("raw passthrough") and "500" in line and "ok" in line for line in lines)
    assert any(
        line.startswith("beam on prism") and line.endswith("FAILED: 10/1000 records written after 5s") for line in lines
    )
    assert plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert not plot(rows[1:], tmp_path / "none.png")  # no system finished: nothing to plot, and no crash
    assert not (tmp_path / "none.png").exists()


def test_every_run_on_prism_gets_a_fresh_job_server_of_the_chosen_build(monkeypatch, tmp_path):
    from benchmarks import end_to_end

    servers = []

    class FakeServer:
        def __init__(self, stack, *, binary=None):
            self.binary, self.pid, self.calls = binary, 100 + len(servers), []
            servers.append(self)

        def stop(self):
            self.calls.append("stop")

        def start(self):
            self.calls.append("start")

    monkeypatch.setattr(end_to_end, "PrismJobServer", FakeServer)
    monkeypatch.setattr(end_to_end, "load_settings", lambda overrides: None)
    monkeypatch.setattr(end_to_end, "ConfluentRegistry", lambda url: None)
    monkeypatch.setattr(end_to_end, "stack_path", lambda *parts: tmp_path / "-".join(parts))
    monkeypatch.setattr(end_to_end.subprocess, "Popen", lambda argv, **kw: argv)
    bench = end_to_end.Bench(end_to_end.StackSettings(), "run", 10.0, prism=tmp_path / "prism-ab")
    topics = end_to_end.Topics("in", "group", {"events": "out"})
    bench.start(end_to_end.SYSTEMS["raw"], topics)
    assert len(servers) == 1  # only the pid of the stack's server was looked up
    bench.start(end_to_end.SYSTEMS["beam"], topics)
    bench.start(end_to_end.SYSTEMS["beam-nodedupe"], topics)
    assert [s.calls for s in servers[1:]] == [["stop", "start"], ["stop", "start"]]
    assert {s.binary for s in servers[1:]} == {tmp_path / "prism-ab"}
    assert bench.prism_pid == servers[-1].pid
