"""Every ``scvae`` command shown in the README parses against today's command line.

The README is the new user's first hour: a renamed option or a changed type must fail here,
not in a user's shell.  Each command of the README's ``bash`` blocks is parsed by the real
click command (options, types, required options, choices), without running it; the pipelines
behind them run in the other tests and in ``make demo``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from scvae_cli.main import app

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_commands() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()  # trailing comments
            line = re.sub(r"^\.venv/bin/", "", line)
            if line.startswith("scvae "):
                commands.append(line)
    return commands


COMMANDS = _readme_commands()


def test_the_readme_shows_every_command():
    group = typer.main.get_command(app)
    shown = {shlex.split(c)[1] for c in COMMANDS if len(shlex.split(c)) > 1 and not shlex.split(c)[1].startswith("-")}
    assert set(group.commands) <= shown, sorted(set(group.commands) - shown)
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    group = typer.main.get_command(app)
    args = shlex.split(command)[1:]
    if args == ["--help"]:
        return
    name, rest = args[0], args[1:]
    assert name in group.commands, f"unknown command {name!r} in the README: {command}"
    try:
        group.commands[name].make_context(name, list(rest))
    except Exception as err:  # noqa: BLE001 - click's errors: an unknown option, a bad value, a missing option
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        pytest.fail(f"README command does not parse: {command}\n  {message}")


@pytest.mark.parametrize("args", [["--adata", "x.h5ad", "--out", "r", "--no-such-option"],
                                  ["--adata", "x.h5ad", "--out", "r", "--n-latent", "many"],
                                  ["--adata", "x.h5ad"]])
def test_a_command_that_drifted_does_not_parse(args):
    with pytest.raises(Exception, match="No such option|valid integer|Missing parameter"):
        typer.main.get_command(app).commands["train"].make_context("train", args)
