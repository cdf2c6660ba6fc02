"""Log lines of the toolkit go to stderr; results go to stdout or files.

Used by the command-line program and ``make demo``; a notebook user configures logging as
usual (the toolkit logs through ``logging.getLogger("scperturb_vae")``).
"""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["setup_logging", "quiet_third_party", "in_notebook", "on_terminal"]


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to the *current* ``sys.stderr`` (which tests and notebooks swap)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; ignore
        pass


def setup_logging(verbose: bool = True) -> None:
    """Send the toolkit's log lines to stderr, once."""
    logger = logging.getLogger("scperturb_vae")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


def quiet_third_party() -> None:
    """Hide known, harmless warnings and INFO chatter of Lightning / scvi-tools."""
    for module in ("lightning", "pytorch_lightning", "lightning_fabric", "scvi", "anndata", "torch"):
        warnings.filterwarnings("ignore", module=module)
    # Lightning sets its loggers to INFO when imported: import it first, then lower them
    import lightning.pytorch  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def in_notebook() -> bool:
    """Whether the code runs in a Jupyter kernel (IPython's kernel app is configured)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (stderr) is a terminal or a notebook (live progress bars render) rather
    than a file or a pipe."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty()) or in_notebook()
    except ValueError:  # a closed stream
        return False
