"""The commands the README shows in its bash blocks, for the tests that parse and run them."""

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
PROGRAMS = ("ingestion", "runners")


def readme_commands(program: str | None = None) -> list[list[str]]:
    """Each ``<python> -m <program> ...`` line of the README's bash blocks, as argv after ``-m``."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    found = []
    for line in (line for block in blocks for line in block.splitlines()):
        argv = shlex.split(line, comments=True)
        is_program = len(argv) >= 3 and argv[0].endswith("python") and argv[1] == "-m" and argv[2] in PROGRAMS
        if is_program and program in (None, argv[2]):
            found.append(argv[2:])
    return found
