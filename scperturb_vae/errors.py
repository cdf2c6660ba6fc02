"""Exceptions for mistakes a user can fix.

Every error a user can cause (a wrong file, a missing column, an output folder that
already exists) is raised as a subclass of :class:`ScvaeError`.  The command-line
program catches these and prints their message as one line on stderr with the
class's ``exit_code``; anything else is a bug and keeps its traceback.

Exit codes (documented in the README):

- ``1``: an unexpected internal error (a bug; the traceback is printed).
- ``2``: bad usage or bad input data (:class:`InputError`).
- ``3``: an output problem: the output exists, or cannot be written (:class:`OutputError`).
"""

from __future__ import annotations


class ScvaeError(Exception):
    """Base class of all user-facing errors."""

    exit_code: int = 2


class InputError(ScvaeError, ValueError):
    """The input file or its contents cannot be used as asked."""

    exit_code = 2


class OutputError(ScvaeError, OSError):
    """An output location exists already or cannot be written."""

    exit_code = 3
