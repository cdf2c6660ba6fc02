"""Fixtures shared by the whole suite; the helpers live in ``helpers.py`` beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

# the test modules sit in folders mirroring the package; they import the shared helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    """A Typer runner with stdout and stderr apart."""
    return CliRunner()
