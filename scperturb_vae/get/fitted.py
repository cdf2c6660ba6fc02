"""Read back what :func:`scperturb_vae.tl.fit` / :func:`~scperturb_vae.tl.embed` and the other
``tl`` functions wrote into an AnnData (keys checked, names restored, one-line errors).

Under a key ``K``: ``obsm["X_K"]`` the latents, ``uns["K"]`` the model's record (its
``latent_names``, ``intervention_graph``, settings ...), ``varm["K_gene_effects"]`` the gene
effects (genes x latents), ``uns["K"]["enrichment"]`` the enrichment table.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError

__all__ = ["GENE_EFFECTS_SUFFIX", "edge_shifts", "effects_key", "fitted_keys", "gene_effects", "graph", "latent", "latent_names",
           "resolve_key"]

#: ``varm[key + GENE_EFFECTS_SUFFIX]`` holds a model's gene effects.
GENE_EFFECTS_SUFFIX = "_gene_effects"


def fitted_keys(adata) -> list[str]:
    """The keys of ``adata.uns`` written by :func:`fit` or :func:`embed`."""
    return [k for k, v in adata.uns.items() if isinstance(v, Mapping) and "latent_names" in v and "obsm_key" in v]


def resolve_key(adata, key: str | None, what: str = "a model") -> str:
    """The given key (checked) or the only fitted one."""
    keys = fitted_keys(adata)
    if key is not None:
        if key not in keys:
            shown = ", ".join(keys) if keys else "none"
            raise InputError(f"no fitted model under key {key!r} in adata.uns (fitted keys: {shown}); run tl.fit first")
        return key
    if not keys:
        raise InputError(f"adata holds no fitted model; run tl.fit (or tl.embed) before using {what}")
    if len(keys) > 1:
        raise InputError(f"adata holds several fitted models ({', '.join(keys)}); pass key=")
    return keys[0]


def latent_names(entry: Mapping) -> list[str]:
    return [str(x) for x in np.asarray(entry["latent_names"]).ravel()]


def graph(adata, key: str) -> pd.DataFrame:
    """``uns[key]["intervention_graph"]`` as perturbations x latents (names restored)."""
    table = adata.uns[key].get("intervention_graph")
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"adata.uns[{key!r}] has no intervention graph DataFrame; run tl.fit or tl.embed again")
    table = table.astype(np.float64)
    table.index = pd.Index(table.index.astype(str), name="perturbation")
    table.columns = pd.Index(table.columns.astype(str), name="latent")
    return table


def edge_shifts(adata, key: str) -> pd.DataFrame | None:
    """``uns[key]["edge_shift_sd"]``: each perturbation's shift of each latent in control sd (None: absent)."""
    table = adata.uns[key].get("edge_shift_sd")
    if not isinstance(table, pd.DataFrame):
        return None
    table = table.astype(np.float64)
    table.index = pd.Index(table.index.astype(str), name="perturbation")
    table.columns = pd.Index(table.columns.astype(str), name="latent")
    return table


def latent(adata, key: str) -> np.ndarray:
    obsm_key = str(adata.uns[key].get("obsm_key", "X_" + key))
    if obsm_key not in adata.obsm:
        raise InputError(f"adata.obsm has no {obsm_key!r} (the latents of key {key!r}); run tl.fit or tl.embed again")
    return np.asarray(adata.obsm[obsm_key], dtype=np.float64)


def effects_key(adata, key: str | None) -> str:
    have = [k[: -len(GENE_EFFECTS_SUFFIX)] for k in adata.varm if k.endswith(GENE_EFFECTS_SUFFIX)]
    if key is not None:
        if key not in have:
            raise InputError(f"adata.varm has no {key + GENE_EFFECTS_SUFFIX!r}; run tl.gene_effects first")
        return key
    if not have:
        raise InputError("adata.varm holds no gene effects; run tl.gene_effects first")
    if len(have) > 1:
        raise InputError(f"adata holds gene effects of several models ({', '.join(have)}); pass key=")
    return have[0]


def gene_effects(adata, key: str | None = None) -> pd.DataFrame:
    """The gene effects of ``varm[key + "_gene_effects"]`` as latents x genes (float64).

    ``key`` defaults to the only key with gene effects (:func:`effects_key`).
    """
    key = effects_key(adata, key)
    stored = adata.varm[key + GENE_EFFECTS_SUFFIX]
    if isinstance(stored, pd.DataFrame):
        effects = stored.T
    else:
        entry = adata.uns.get(key, {})
        if not isinstance(entry, Mapping) or "latent_names" not in entry:
            raise InputError(f"adata.varm[{key + GENE_EFFECTS_SUFFIX!r}] has no latent names; "
                             "run tl.gene_effects again")
        effects = pd.DataFrame(np.asarray(stored).T, index=latent_names(entry), columns=adata.var_names)
    effects = effects.astype(np.float64)
    effects.index = pd.Index([str(x) for x in effects.index], name="latent")
    effects.columns = pd.Index([str(g) for g in adata.var_names], name="gene")
    return effects
