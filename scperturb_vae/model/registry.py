"""The one table of the models: CLI / config name, class name and default AnnData key.

Importing this module loads neither torch nor scvi-tools (the classes are looked up in
:mod:`scperturb_vae.model.models` on first use), so commands can check a model name
before the heavy imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module

from scperturb_vae.errors import InputError

__all__ = ["DEFAULT_N_LATENT", "MODEL_NAMES", "CLASS_NAMES", "DEFAULT_KEYS", "model_class", "model_name", "parse_models"]

#: name -> (class name, default key of ``obsm["X_" + key]`` / ``uns[key]``)
_TABLE = {
    "svae+": ("SVAEPlus", "svae"),
    "svae": ("SVAE", "svae_l1"),
    "ivae": ("IVAE", "ivae"),
    "vae": ("VAE", "vae"),
}

#: latents of a model unless told: more than most screens' programs, since over-specifying
#: costs nothing measurable (sVAE+ leaves the extra latents inactive: paper preset, 15 true
#: latents, MCC 0.972 / graph F1 0.998 with 20 against 0.973 / 0.998 with 15; realistic
#: preset, 10 true, 0.878 / 0.874 with 20 against 0.874 / 0.871 with 10), while too few
#: latents merge programs and cap the MCC at (latents / true latents)
DEFAULT_N_LATENT = 20

#: the models' CLI / config names, in the order the help lists them
MODEL_NAMES: tuple[str, ...] = tuple(_TABLE)
#: name -> class name
CLASS_NAMES: dict[str, str] = {name: cls for name, (cls, _) in _TABLE.items()}
#: name -> default key in an AnnData
DEFAULT_KEYS: dict[str, str] = {name: key for name, (_, key) in _TABLE.items()}


def model_class(name: str):
    """The model class of a name (``"svae+"`` -> :class:`~scperturb_vae.model.models.SVAEPlus`)."""
    if name not in CLASS_NAMES:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return getattr(import_module("scperturb_vae.model.models"), CLASS_NAMES[name])


def model_name(model) -> str | None:
    """The name of a model instance or class (``SVAEPlus`` -> ``"svae+"``), or None."""
    cls = model if isinstance(model, type) else type(model)
    for name, cls_name in CLASS_NAMES.items():
        if cls.__name__ == cls_name:
            return name
    return None


def parse_models(models: str | Iterable[str]) -> list[str]:
    """Model names from ``"svae+,vae"`` (or a list): known, distinct, in the given order."""
    items = models.split(",") if isinstance(models, str) else list(models)
    names = [str(m).strip().lower() for m in items if str(m).strip()]
    if not names:
        raise InputError(f"--models is empty; give a comma-separated list of {', '.join(MODEL_NAMES)}")
    unknown = [m for m in names if m not in MODEL_NAMES]
    if unknown:
        raise InputError(f"unknown model(s) {', '.join(unknown)}; choose among {', '.join(MODEL_NAMES)}")
    if len(set(names)) != len(names):
        raise InputError(f"--models lists a model twice: {','.join(names)}")
    return names
