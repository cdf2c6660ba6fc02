"""scperturb-vae: identifiable latent models of single-cell perturbation screens.

Models (scvi-tools model classes; importing them loads scvi-tools, so they are imported
lazily and ``import scperturb_vae`` stays fast):

- :class:`SVAEPlus`: sVAE+, the sparse mechanism shift VAE (spike-and-slab prior shifts).
- :class:`SVAE`: the same prior with an L1 sparsity penalty (the paper's ablation).
- :class:`IVAE`: iVAE, a conditional Gaussian (exponential-family) prior.
- :class:`VAE`: the ``N(0, I)`` baseline, with beta-VAE and beta-TCVAE variants.

Data: :func:`open_perturbation_adata`, :func:`validate_perturbation_adata`;
simulation: :func:`simulate_screen`.

Notebook API in scanpy's style (submodules, imported on first use): ``tl`` (train, embed,
gene effects, enrichment, recovery, held-out likelihood on an AnnData), ``get`` (read back
what ``tl`` wrote) and ``pl`` (the plots), e.g.
``import scperturb_vae as sv; model = sv.tl.fit(adata); sv.pl.graph(adata)``.

The package is one folder per layer, each importing only from the layers before it:
``data`` (the input) < ``module`` (priors, the VAE module) < ``train`` (plan, checkpoints) <
``model`` (the classes, save/load, interpretability) < ``get`` < ``tl`` < ``pl`` <
``pipelines`` (file in, folder out: what the commands run) < ``bench`` (the speed harness);
``errors``, ``io`` and ``logs`` serve them all.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scperturb-vae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

_LAZY = {
    "SVAEPlus": "model.models",
    "SVAE": "model.models",
    "IVAE": "model.models",
    "VAE": "model.models",
    "MODELS": "model.models",
    "PerturbationVAEModule": "module.vae",
    "open_perturbation_adata": "data.validate",
    "validate_perturbation_adata": "data.validate",
    "PerturbationData": "data.validate",
    "simulate_screen": "data.simulate",
    "load_run": "model.runs",
    "ScvaeError": "errors",
    "InputError": "errors",
    "OutputError": "errors",
}

#: submodules imported on first use (``sv.tl``, ``sv.pl``, ``sv.get``)
_SUBMODULES = ("tl", "pl", "get")

__all__ = sorted(_LAZY) + list(_SUBMODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
