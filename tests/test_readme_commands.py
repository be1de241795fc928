"""Every ``distilldift ...`` line of the README is a command the real CLI accepts: a renamed or removed option cannot
leave the README behind. Concrete lines are parsed by the command itself (options, types, choices); synopsis lines
(with ``[...]``, ``|`` or ``...``) must name only options the command has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from distilldift.cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _lines() -> list[str]:
    """The README's shell lines that run distilldift (continuations joined, comments and prefixes dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        joined: list[str] = []
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and joined:
                joined[-1] += " " + line.strip()
            elif line.strip():
                joined.append(line.strip())
        for line in joined:
            line = re.split(r"\s+#\s", " " + line, maxsplit=1)[0].strip()
            for part in line.split("&&"):
                found = re.search(r"(?:^|\s|-m\s)(distilldift\s.*)$", part.strip())
                if found and not found.group(1).startswith("distilldift/"):
                    out.append(found.group(1).strip())
    return out


LINES = _lines()
# commands quoted in the prose (`distilldift eval --protocol paper`): often partial, so only their options are checked
INLINE = sorted(set(re.findall(r"`(distilldift [a-z]+(?: [^`]*)?)`", README.read_text(encoding="utf-8"))))


def test_the_readme_has_command_lines():
    assert len(LINES) > 30 and any("--protocol paper" in line for line in LINES) and len(INLINE) >= 5


@pytest.mark.parametrize("line", LINES + [f"{q} ..." for q in INLINE])
def test_readme_command_line_parses(line):
    group = typer.main.get_command(app)
    words = line.split()[1:]
    name = words[0]
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"README: no command {name!r} in {line!r}"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    if re.search(r"\[|\||\.\.\.", line):  # a synopsis: every option it names must exist
        for option in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", line):
            assert option in known, f"README synopsis {line!r}: {name} has no option {option}"
        return
    args = shlex.split(line)[2:]
    with click.Context(group, info_name="distilldift") as parent:
        command.make_context(name, args, parent=parent)  # raises on an unknown option, a bad value or choice
