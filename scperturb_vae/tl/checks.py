"""Checks of the notebook API's arguments: the AnnData, keys, and the one validation of the
training and evaluation settings shared by ``tl``, ``scvae train`` and ``scvae evaluate``.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping

import numpy as np

from scperturb_vae.errors import InputError

logger = logging.getLogger("scperturb_vae")


def check_adata(adata, what: str = "adata") -> None:
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        raise InputError(f"{what} must be an AnnData, not {type(adata).__name__}")


def check_key(key: str, what: str = "key_added") -> str:
    if not isinstance(key, str) or not key.strip() or "/" in key:
        raise InputError(f"{what} must be a non-empty string without '/', not {key!r}")
    return key


def _name(name: str, flags: bool) -> str:
    return "--" + name.replace("_", "-") if flags else name


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: smallest value of each integer setting (``max_epochs`` may also be None: the epoch rule)
INT_MINIMUM = {
    "n_latent": 1, "max_epochs": 1, "batch_size": 2, "seed": 0, "min_cells": 1, "n_clusters": 1,
    "n_importance": 1, "adapt_steps": 1, "heldin_cells": 0, "checkpoint_every": 1, "ll_cells": 0, "ll_samples": 1,
    "patience": 0, "n_cells": 1, "num_nodes": 1,
}


def check_settings(flags: bool = False, **settings) -> None:
    """The one validation of training and evaluation settings (``tl``, ``scvae train``, ``evaluate``).

    Checks each given setting: ``model`` (a registered name), ``likelihood``, the integers of
    :data:`INT_MINIMUM`, ``lr`` (positive), ``adapt_fraction`` (in (0, 1)).  Messages name a
    setting as the caller spells it: ``n_latent``, or ``--n-latent`` with ``flags``.
    """
    from scperturb_vae.model.registry import MODEL_NAMES
    from scperturb_vae.module.likelihoods import LIKELIHOODS

    for name, value in settings.items():
        shown = _name(name, flags)
        if name == "model":
            if value not in MODEL_NAMES:
                raise InputError(f"unknown model {value!r}; choose one of {', '.join(MODEL_NAMES)}")
        elif name == "likelihood":
            if value not in LIKELIHOODS:
                raise InputError(f"unknown likelihood {value!r}; choose nb, zinb or poisson")
        elif name in INT_MINIMUM:
            if value is None and name == "max_epochs":
                continue
            if not _is_int(value):
                raise InputError(f"{shown} must be an integer, not {value!r}")
            if value < INT_MINIMUM[name]:
                raise InputError(f"{shown} must be at least {INT_MINIMUM[name]}, not {value}")
        elif name == "lr":
            if not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
                raise InputError(f"{shown} must be a positive number, not {value!r}")
        elif name == "adapt_fraction":
            if not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
                raise InputError(f"{shown} must be between 0 and 1, not {value}")
        else:
            raise ValueError(f"no rule for setting {name!r}")  # a bug of the caller


def check_model_kwargs(cls, model: str, model_kwargs: Mapping) -> None:
    import inspect

    from scperturb_vae.model.base import MODULE_OPTIONS

    params = inspect.signature(cls.__init__).parameters
    own = {n for n, p in params.items()
           if n not in ("self", "adata", "n_latent", "likelihood") and p.kind is not p.VAR_KEYWORD}
    unknown = sorted(set(model_kwargs) - own - set(MODULE_OPTIONS))
    if unknown:
        raise InputError(
            f"unknown option(s) {', '.join(unknown)} for model {model!r}; "
            f"its options are {', '.join(sorted(own | set(MODULE_OPTIONS)))}"
        )


def check_fewshot(fewshot) -> list:
    if isinstance(fewshot, (str, numbers.Integral)):
        fewshot = [fewshot]
    items = list(fewshot)
    for item in items:
        ok = (isinstance(item, str) and item.strip().lower() == "all") or (
            isinstance(item, numbers.Integral) and not isinstance(item, bool) and item >= 0)
        if not ok:
            raise InputError(f"fewshot takes cell numbers >= 0 and 'all' (e.g. (0, 10, 50, 'all')), not {item!r}")
    return parse_fewshot(items)


def parse_fewshot(value) -> list[int | str]:
    """``"0,10,50,all"`` -> ``[0, 10, 50, "all"]`` (sorted, unique)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for item in items:
        item = str(item).strip().lower()
        if not item:
            continue
        if item == "all":
            out.append("all")
            continue
        try:
            n = int(item)
        except ValueError:
            raise InputError(f"--fewshot takes cell numbers and 'all' (e.g. 0,10,50,all), not {item!r}") from None
        if n < 0:
            raise InputError(f"--fewshot cell numbers must be >= 0, not {n}")
        out.append(n)
    numbers = sorted({x for x in out if x != "all"})
    return numbers + (["all"] if "all" in out else [])
