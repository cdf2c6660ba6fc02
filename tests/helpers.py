"""Helpers shared by the test modules (imported as ``from helpers import ...``; ``conftest.py``
puts this folder on the path)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner

from scvae_cli.main import app

#: ../shared/data beside the checkout (the real screen and gene-set files); tests that use it
#: skip with a reason when it is absent
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (inputs must be left untouched)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def invoke(runner: CliRunner, *args: object, **kwargs):
    """Run ``scvae ARGS`` in-process (arguments stringified)."""
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def assert_user_error(result, exit_code: int) -> str:
    """A user error: the documented exit code, one ``error:`` line on stderr (the last), no traceback.

    Progress lines logged before the error (the data summary) may precede it.  Returns the line.
    """
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr, result.exception)
    # the command ended through sys.exit, not through an escaping exception
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    return lines[-1]


def leftovers(folder: Path) -> list[str]:
    """Hidden (temporary) entries the atomic writers could leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
