"""Every command the README shows is one its program accepts: each ``python -m <program> ...`` line of a
bash block is parsed by that program's own argument parser (``make run``/``make test`` run in CI and in
``tests/integration/test_make_run.py``)."""

import re
import shlex
from pathlib import Path

import pytest

from ingestion.__main__ import build_parser as ingestion_parser
from runners.__main__ import build_parser as runners_parser

README = Path(__file__).resolve().parents[2] / "README.md"
PARSERS = {"ingestion": ingestion_parser, "runners": runners_parser}


def _commands() -> list[tuple[str, list[str]]]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    found = []
    for line in (line for block in blocks for line in block.splitlines()):
        argv = shlex.split(line, comments=True)
        if len(argv) >= 3 and argv[0].endswith("python") and argv[1] == "-m" and argv[2] in PARSERS:
            found.append((argv[2], argv[3:]))
    return found


COMMANDS = _commands()


def test_the_readme_shows_commands_of_both_programs():
    assert {program for program, _ in COMMANDS} == set(PARSERS)


@pytest.mark.parametrize(("program", "argv"), COMMANDS, ids=[" ".join([p, *a])[:60] for p, a in COMMANDS])
def test_readme_command_parses(program, argv):
    if argv == ["--help"]:
        with pytest.raises(SystemExit) as done:
            PARSERS[program]().parse_args(argv)
        assert done.value.code == 0
        return
    PARSERS[program]().parse_args(argv)  # argparse exits 2 (a failed test) on a command it does not accept
