"""The README's first command, run as a new user would: `make run` must print a reconciled live run; then,
on the stack it started, the README's other pipeline command."""

import re
import subprocess
from pathlib import Path

import pytest

from runners.stack.process import ManagedProcess
from tests.readme import readme_commands

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_make_run_prints_a_reconciled_live_run():
    already_up = ManagedProcess("kafka").pid() is not None  # a developer's `make up`: use it, leave it running
    try:
        done = subprocess.run(
            ["make", "run", "EVENTS=600", "SEED=3"], cwd=REPO, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        line = next(x for x in done.stdout.splitlines() if x.startswith("reconciliation:"))
        assert re.search(r"in \d+ = routed \d+ \+ dead-lettered \d+ \+ filtered \d+ -> OK; lost 0", line), line
        assert "published 600 records" in done.stdout
        assert re.search(r"^\[ *\d+\.\ds\] completely written \d+ \(lag \d+\)", done.stdout, re.M), "no progress line"

        (readme_run,) = [argv for argv in readme_commands("runners") if "--events" in argv]
        again = subprocess.run(
            [str(REPO / ".venv" / "bin" / "python"), "-m", *readme_run],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "-> OK; lost 0" in again.stdout, again.stdout[-3000:]
    finally:
        if not already_up:
            subprocess.run(["make", "down"], cwd=REPO, capture_output=True, timeout=300)
