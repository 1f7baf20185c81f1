"""Every command the README shows is one its program accepts, checked fast with the program's own parser
(``tests/integration/test_readme_commands.py`` and ``test_make_run.py`` run them for real)."""

import pytest

from ingestion.__main__ import build_parser as ingestion_parser
from runners.__main__ import build_parser as runners_parser
from tests.readme import PROGRAMS, readme_commands

PARSERS = {"ingestion": ingestion_parser, "runners": runners_parser}
COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_both_programs():
    assert {argv[0] for argv in COMMANDS} == set(PROGRAMS)


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_readme_command_parses(argv):
    program, *args = argv
    if args == ["--help"]:
        with pytest.raises(SystemExit) as done:
            PARSERS[program]().parse_args(args)
        assert done.value.code == 0
        return
    PARSERS[program]().parse_args(args)  # argparse exits 2 (a failed test) on a command it does not accept
