"""scperturb-vae: identifiable latent models of single-cell perturbation screens.

Models (scvi-tools model classes; importing them loads scvi-tools, so they are imported
lazily and ``import scperturb_vae`` stays fast):

- :class:`SVAEPlus`: sVAE+, the sparse mechanism shift VAE (spike-and-slab prior shifts).
- :class:`SVAE`: the same prior with an L1 sparsity penalty (the paper's ablation).
- :class:`IVAE`: iVAE, a conditional Gaussian (exponential-family) prior.
- :class:`VAE`: the ``N(0, I)`` baseline, with beta-VAE and beta-TCVAE variants.

Data: :func:`open_perturbation_adata`, :func:`validate_perturbation_adata`;
simulation: :func:`simulate_screen`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scperturb-vae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

_LAZY = {
    "SVAEPlus": "models",
    "SVAE": "models",
    "IVAE": "models",
    "VAE": "models",
    "MODELS": "models",
    "PerturbationVAEModule": "module",
    "open_perturbation_adata": "data",
    "validate_perturbation_adata": "data",
    "PerturbationData": "data",
    "simulate_screen": "simulate",
    "ScvaeError": "errors",
    "InputError": "errors",
    "OutputError": "errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
