"""The rendered ``--help`` of every command: defaults shown, no stray markup, whole examples.

A user reads the defaults (the detected columns, the epoch rule, K) from ``--help``; an
earlier rich-markup rendering swallowed every hand-written ``[default: ...]`` note and left
``Training epochs .``.  These tests read the help as a terminal shows it.
"""

from __future__ import annotations

import re

import pytest
import typer
from helpers import invoke
from typer.core import TyperOption

from scvae_cli.main import app

COMMANDS = sorted(typer.main.get_command(app).commands)


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def _option_entries(text: str) -> dict[str, str]:
    """The Options section split into one entry per option (first flag -> its whole text)."""
    section = text.split("\nOptions:\n", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"^  ((?:--?[\w-]+(?:, )?)+)", line)
        if match:
            names = [n.strip() for n in match.group(1).split(",") if n.strip()]
            for name in names:
                entries[name] = line
            current = names
        elif current is not None:
            for name in current:
                entries[name] += " " + line.strip()
    return entries


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_with_a_default_shows_it(runner, name):
    result = invoke(runner, name, "--help")
    assert result.exit_code == 0, result.stderr
    entries = _option_entries(result.stdout)
    missing = []
    for param in _command(name).params:
        if not isinstance(param, TyperOption) or param.name == "help" or param.hidden:
            continue
        flag = max(param.opts, key=len)
        entry = next((entries[o] for o in param.opts if o in entries), None)
        assert entry is not None, f"{name} --help does not list {flag}"
        valued = not param.is_flag or param.secondary_opts  # a plain on-switch needs no default
        if valued and param.default is not None and not param.required and "[default:" not in entry:
            missing.append(flag)
        if param.default is None and not param.is_flag and not param.required and "[default:" not in entry:
            # an option left unset means "detected" or "off": its help must say which
            assert any(w in entry.lower() for w in ("detected", "default", "none", "without", "off", "all", "skip",
                                                   "only", "optional", "if ", "when")), (name, flag, entry)
    assert not missing, f"{name} --help hides the defaults of {missing}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_no_markup_left_and_whole_examples(runner, name):
    result = invoke(runner, name, "--help")
    text = result.stdout
    assert "<bool>" not in text
    assert not re.search(r"\w \.(\s|$)", text), "a note was swallowed before a full stop"
    assert "[/" not in text and "[bold" not in text
    doc = _command(name).help or ""
    examples = [line.strip() for line in doc.splitlines() if line.strip().startswith("scvae ")]
    assert examples, f"{name} --help has no example"
    for line in examples:
        assert line in text, f"the example {line!r} is broken across lines"


def test_train_help_states_the_rules_a_user_needs(runner):
    text = " ".join(invoke(runner, "train", "--help").stdout.split())
    from scperturb_vae.model.registry import DEFAULT_N_LATENT

    assert f"[default: {DEFAULT_N_LATENT}]" in text  # --n-latent, the library's default
    assert "detected among" in text  # perturbation column and control label
    assert "K of the Beta(1, K)" in text and "[default: 100]" in text
    assert "heuristic" in text  # the epoch rule
