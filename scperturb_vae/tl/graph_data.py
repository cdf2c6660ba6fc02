r"""The graph against the data: what each perturbation does to the counts, with no model.

On a real screen there is no true graph.  What a user can check is whether the learned graph
agrees with what the counts themselves show:

:func:`perturbation_effects`
    Per perturbation, its transcriptional effect measured from the counts alone, against the
    control cells:

    - ``n_de``: genes differentially expressed at ``fdr`` (Benjamini-Hochberg over genes), from
      scanpy's ``rank_genes_groups`` (Wilcoxon rank-sum on log-normalised counts), and the top
      ones (``top_up`` / ``top_down``);
    - ``pseudobulk_shift``: the Euclidean norm of the difference of mean log-normalised
      expression (over all genes);
    - ``e_distance``: the energy distance of Rizzi / Peidli et al. (scPerturb's E-distance,
      ``2 E|x - y| - E|x - x'| - E|y - y'|``) between its cells and the controls in the PCA
      space of the data (``n_pcs`` components; at most ``max_cells`` cells per side);
    - ``has_effect``: ``n_de >= min_de``.

    The cells of a combination ``A+B`` are their own label and are not pooled into ``A`` or
    ``B``.

:func:`graph_vs_data`
    The perturbation table joined to a learned graph: each perturbation's edges (``targets``,
    ``max_probability``, and the strongest edge's ``evidence`` in nats when the model gives
    one) and a ``verdict``: ``"agree"`` (an edge and a measurable effect, or neither),
    ``"effect without edge"``, ``"edge without effect"``, or ``"not in graph"``.

:func:`effect_pairs`
    Pairs of perturbations with measurable effects whose pseudobulk shifts correlate (Pearson,
    over the screen's responsive genes) above ``min_correlation``, and whether they share a latent.
    Perturbations of one pathway should.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from scperturb_vae.errors import InputError
from scperturb_vae.threads import keep_torch_threads

logger = logging.getLogger("scperturb_vae")

__all__ = ["EFFECT_COLUMNS", "VERDICTS", "perturbation_effects", "graph_vs_data", "effect_pairs"]

EFFECT_COLUMNS = (
    "perturbation", "n_cells", "n_de", "n_de_up", "n_de_down", "top_up", "top_down",
    "pseudobulk_shift", "e_distance", "has_effect",
)
VERDICTS = ("agree", "effect without edge", "edge without effect", "not in graph")


def _lognorm(adata, layer: str | None):
    """A new AnnData with log1p(counts per 10k) in X (the input is not modified)."""
    import anndata as ad
    import scanpy as sc

    counts = adata.layers[layer] if layer is not None else adata.X
    counts = sp.csr_matrix(counts, dtype=np.float32)
    out = ad.AnnData(X=counts, obs=adata.obs[[]].copy(), var=pd.DataFrame(index=adata.var_names.astype(str)))
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def _rank_genes(lognorm, labels: np.ndarray, control: str, groups: list[str]) -> pd.DataFrame:
    """scanpy's Wilcoxon test of each group against the control: group, names, scores (z), lfc."""
    import scanpy as sc

    lognorm = lognorm.copy() if lognorm.is_view else lognorm
    lognorm.obs["_group"] = pd.Categorical(labels)
    # scanpy's fragmented-frame and pandas deprecation notes; numba may change torch's threads
    with warnings.catch_warnings(), keep_torch_threads():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(lognorm, "_group", groups=groups, reference=control, method="wilcoxon",
                                key_added="_de", tie_correct=True)
        table = sc.get.rank_genes_groups_df(lognorm, group=None, key="_de")
    if "group" not in table:  # one group: scanpy leaves the column out
        table.insert(0, "group", groups[0])
    return table[["group", "names", "scores", "logfoldchanges"]]


def _de_tables(lognorm, labels: np.ndarray, control: str, groups: list[str], strata: np.ndarray | None,
               min_cells: int) -> pd.DataFrame:
    """Per group and gene: a z score, its two-sided p-value, BH-adjusted over genes, and the lfc.

    With ``strata`` (a covariate such as stimulation), the test runs within each level, and the
    levels' z scores are combined by Stouffer's method with weights ``sqrt(n_group * n_control /
    (n_group + n_control))`` of the level, so that a perturbation whose cells are stimulated
    more or less often than the controls' is not called DE for the stimulation.
    """
    from scipy.stats import false_discovery_control, norm

    if strata is None:
        strata = np.zeros(len(labels), dtype=int)
    parts = []
    for level in pd.unique(strata):
        rows = np.flatnonzero(strata == level)
        lab = labels[rows]
        sizes = pd.Series(lab).value_counts()
        ok = [g for g in groups if sizes.get(g, 0) >= min_cells]
        n_control = int(sizes.get(control, 0))
        if not ok or n_control < min_cells:
            continue
        table = _rank_genes(lognorm[rows], lab, control, ok)
        n = table["group"].map(sizes).astype(float)
        table["weight"] = np.sqrt(n * n_control / (n + n_control))
        parts.append(table)
    if not parts:
        return pd.DataFrame(columns=["group", "names", "z", "logfoldchanges", "pvals_adj"])
    both = pd.concat(parts, ignore_index=True)
    both["wz"] = both["weight"] * both["scores"]
    both["wl"] = both["weight"] * both["logfoldchanges"]
    both["w2"] = both["weight"] ** 2
    out = both.groupby(["group", "names"], observed=True, sort=False)[["wz", "wl", "weight", "w2"]].sum().reset_index()
    out["z"] = out["wz"] / np.sqrt(out["w2"])
    out["logfoldchanges"] = out["wl"] / out["weight"]
    out["pvals"] = 2 * norm.sf(np.abs(out["z"]))
    out["pvals_adj"] = out.groupby("group", observed=True)["pvals"].transform(
        lambda p: false_discovery_control(np.clip(p.to_numpy(), 0, 1), method="bh"))
    return out[["group", "names", "z", "logfoldchanges", "pvals_adj"]]


def _e_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Energy distance ``2 E|a - b| - E|a - a'| - E|b - b'|`` (Euclidean)."""
    return float(2 * cdist(a, b).mean() - cdist(a, a).mean() - cdist(b, b).mean())


def _pcs(lognorm, n_pcs: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD

    x = lognorm.X
    n_comp = max(1, min(n_pcs, min(x.shape) - 1))
    mean = np.asarray(x.mean(axis=0)).ravel()
    dense = np.asarray(x.todense() if sp.issparse(x) else x) - mean
    return TruncatedSVD(n_components=n_comp, random_state=seed).fit_transform(dense)


def perturbation_effects(
    adata,
    *,
    perturbation_key: str,
    control_label: str,
    layer: str | None = None,
    fdr: float = 0.05,
    min_de: int = 1,
    min_cells: int = 3,
    n_top: int = 5,
    n_pcs: int = 20,
    max_cells: int = 500,
    covariate: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Each perturbation's effect on the counts, against the controls (module docstring).

    ``adata`` holds raw counts (in ``X`` or ``layer``); labels with fewer than ``min_cells``
    cells get no test (``n_de`` 0, distances NaN).  ``covariate``: a categorical column of
    ``obs`` (a batch, a stimulation) to compare within: the tests, the shifts and the
    distances are taken within each level against that level's controls and combined
    (weighted by cells), so an uneven share of the levels is not read as an effect.
    Returns one row per label other than the control, columns :data:`EFFECT_COLUMNS`,
    sorted by ``n_de`` (descending).
    """
    if not 0 < fdr < 1:
        raise InputError(f"fdr must be in (0, 1), not {fdr}")
    if perturbation_key not in adata.obs:
        raise InputError(f"perturbation column {perturbation_key!r} is not in adata.obs")
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    if not (labels == control_label).any():
        raise InputError(f"no cell has the control label {control_label!r}")
    strata = _strata(adata, covariate)
    names, sizes = np.unique(labels[labels != control_label], return_counts=True)
    tested = [str(n) for n, k in zip(names, sizes) if k >= min_cells]
    lognorm = _lognorm(adata, layer)
    de = _de_tables(lognorm, labels, control_label, tested, strata, min_cells)
    de = de[de["pvals_adj"] < fdr]
    x = lognorm.X
    pcs = _pcs(lognorm, n_pcs, seed)
    rng = np.random.default_rng(seed)
    shifts, distances = _within_strata(x, pcs, labels, control_label, strata, [str(n) for n in names],
                                       max_cells, min_cells, rng)
    rows = []
    for name, size in zip(names, sizes):
        name = str(name)
        hits = de[de["group"] == name]
        up = hits[hits["logfoldchanges"] > 0].sort_values("pvals_adj")
        down = hits[hits["logfoldchanges"] <= 0].sort_values("pvals_adj")
        is_tested = name in tested
        rows.append({
            "perturbation": name, "n_cells": int(size), "n_de": int(len(hits)),
            "n_de_up": int(len(up)), "n_de_down": int(len(down)),
            "top_up": ",".join(up["names"].astype(str).head(n_top)),
            "top_down": ",".join(down["names"].astype(str).head(n_top)),
            "pseudobulk_shift": float(np.linalg.norm(shifts.loc[name])) if is_tested else np.nan,
            "e_distance": distances.get(name, np.nan) if is_tested else np.nan,
            "has_effect": bool(len(hits) >= min_de),
        })
    table = pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))
    table = table.sort_values(["n_de", "e_distance"], ascending=False, kind="stable").reset_index(drop=True)
    table.attrs.update(fdr=fdr, min_de=min_de, genes=[str(g) for g in lognorm.var_names], de_genes={
        str(name): group["names"].astype(str).tolist() for name, group in de.groupby("group", observed=True)
    })
    table.attrs["shift_matrix"] = shifts
    table.attrs["covariate"] = covariate
    return table


def _strata(adata, covariate: str | None) -> np.ndarray | None:
    if covariate is None:
        return None
    if covariate not in adata.obs:
        raise InputError(f"covariate column {covariate!r} is not in adata.obs")
    return adata.obs[covariate].astype(str).to_numpy()


def _within_strata(x, pcs: np.ndarray, labels: np.ndarray, control: str, strata: np.ndarray | None,
                   names: list[str], max_cells: int, min_cells: int, rng: np.random.Generator):
    """Pseudobulk shifts (perturbations x genes) and E-distances against the controls of each
    covariate level, averaged over the levels weighted by the perturbation's cells there."""
    if strata is None:
        strata = np.zeros(len(labels), dtype=int)
    shift_sum = np.zeros((len(names), x.shape[1]))
    dist_sum = np.zeros(len(names))
    weight = np.zeros(len(names))
    for level in pd.unique(strata):
        in_level = strata == level
        control_rows = np.flatnonzero(in_level & (labels == control))
        if control_rows.size < min_cells:
            continue
        control_mean = np.asarray(x[control_rows].mean(axis=0)).ravel()
        control_pcs = pcs[rng.permutation(control_rows)[:max_cells]]
        for i, name in enumerate(names):
            cells = np.flatnonzero(in_level & (labels == name))
            if cells.size < min_cells:
                continue
            shift_sum[i] += cells.size * (np.asarray(x[cells].mean(axis=0)).ravel() - control_mean)
            dist_sum[i] += cells.size * _e_distance(pcs[rng.permutation(cells)[:max_cells]], control_pcs)
            weight[i] += cells.size
    with np.errstate(invalid="ignore", divide="ignore"):
        shifts = shift_sum / weight[:, None]
        distances = dist_sum / weight
    return (pd.DataFrame(shifts, index=pd.Index(names, name="perturbation")),
            {n: float(d) for n, d in zip(names, distances) if np.isfinite(d)})


def graph_vs_data(
    effects: pd.DataFrame,
    graph: pd.DataFrame,
    *,
    evidence: pd.DataFrame | None = None,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Join :func:`perturbation_effects` to a learned graph (perturbations x latents, in [0, 1]).

    Adds ``n_edges``, ``targets`` (latents above ``threshold``, strongest first),
    ``max_probability``, ``evidence`` (the log Bayes factor of the strongest edge, NaN
    without ``evidence``) and ``verdict`` (:data:`VERDICTS`).  The verdicts are counted in
    ``attrs["counts"]``.
    """
    table = effects.copy()
    n_edges, targets, best, best_evidence, verdict = [], [], [], [], []
    for row in table.itertuples(index=False):
        if row.perturbation not in graph.index:
            n_edges.append(0)
            targets.append("")
            best.append(np.nan)
            best_evidence.append(np.nan)
            verdict.append("not in graph")
            continue
        probs = graph.loc[row.perturbation].astype(float)
        on = probs[probs > threshold].sort_values(ascending=False)
        n_edges.append(int(len(on)))
        targets.append(",".join(map(str, on.index)))
        best.append(float(probs.max()))
        best_evidence.append(float(evidence.loc[row.perturbation, probs.idxmax()]) if evidence is not None else np.nan)
        has_edge = len(on) > 0
        verdict.append("agree" if has_edge == bool(row.has_effect) else
                       ("effect without edge" if row.has_effect else "edge without effect"))
    table["n_edges"] = n_edges
    table["targets"] = targets
    table["max_probability"] = best
    table["evidence"] = best_evidence
    table["verdict"] = verdict
    table.attrs = dict(effects.attrs)
    table.attrs["counts"] = {v: int((table["verdict"] == v).sum()) for v in VERDICTS}
    table.attrs["threshold"] = threshold
    return table


def _responsive_genes(table: pd.DataFrame, shifts: pd.DataFrame, min_genes: int, n_fallback: int = 100) -> list[int]:
    """Columns of the genes DE in any perturbation, or, when fewer than ``min_genes``, the
    ``n_fallback`` genes whose shifts vary most between the perturbations with an effect."""
    gene_index = {g: i for i, g in enumerate(table.attrs.get("genes", []))}
    de_genes = table.attrs.get("de_genes", {})
    union = sorted({gene_index[g] for genes in de_genes.values() for g in genes if g in gene_index})
    if len(union) >= min_genes:
        return union
    effective = [p for p in table.loc[table["has_effect"], "perturbation"] if p in shifts.index]
    spread = np.nan_to_num(shifts.loc[effective].to_numpy()).var(axis=0) if effective else np.zeros(shifts.shape[1])
    return sorted(np.argsort(-spread)[:n_fallback].tolist())


def effect_pairs(
    table: pd.DataFrame,
    graph: pd.DataFrame,
    *,
    min_correlation: float = 0.8,
    threshold: float = 0.5,
    min_genes: int = 10,
) -> pd.DataFrame:
    """Pairs of perturbations with measurable effects whose shifts correlate, and whether they share a latent.

    ``table`` is :func:`perturbation_effects`'s (or :func:`graph_vs_data`'s) output.  The
    Pearson correlation of two pseudobulk shifts is taken over the screen's responsive genes:
    those DE in any perturbation (or, when fewer than ``min_genes``, the 100 genes whose
    shifts vary most).  Columns: ``a``, ``b``, ``correlation``, ``n_genes``,
    ``shared_latents`` (comma-separated), ``share_latent``; sorted by correlation.
    """
    shifts: pd.DataFrame = table.attrs["shift_matrix"]
    cols = _responsive_genes(table, shifts, min_genes)
    effective = [p for p in table.loc[table["has_effect"], "perturbation"] if p in shifts.index]
    rows = []
    for i, a in enumerate(effective):
        for b in effective[i + 1:]:
            x, y = shifts.loc[a].to_numpy()[cols], shifts.loc[b].to_numpy()[cols]
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() < 3:
                continue
            r = float(np.corrcoef(x[ok], y[ok])[0, 1])
            if not np.isfinite(r) or r < min_correlation:
                continue
            shared = []
            if a in graph.index and b in graph.index:
                on_a, on_b = graph.loc[a] > threshold, graph.loc[b] > threshold
                shared = [str(c) for c in graph.columns[(on_a & on_b).to_numpy()]]
            rows.append({"a": a, "b": b, "correlation": r, "n_genes": int(ok.sum()),
                         "shared_latents": ",".join(shared), "share_latent": bool(shared)})
    columns = ["a", "b", "correlation", "n_genes", "shared_latents", "share_latent"]
    return pd.DataFrame(rows, columns=columns).sort_values("correlation", ascending=False).reset_index(drop=True)
