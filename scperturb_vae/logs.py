"""Log lines of the toolkit go to stderr; results go to stdout or files.

Used by the command-line program and ``make demo``; a notebook user configures logging as
usual (the toolkit logs through ``logging.getLogger("scperturb_vae")``).
"""

from __future__ import annotations

import logging
import sys
import warnings

__all__ = ["setup_logging", "quiet_third_party"]


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
