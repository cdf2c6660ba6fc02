"""Gene-set enrichment of latent variables, and of the perturbations that move them.

Two questions name a latent of an identifiable model:

- *which genes does it move?*  Its decoder effects (one score per gene, see
  :func:`scperturb_vae.model.interpretability.gene_effects`) are tested for enrichment of known gene
  sets (Hallmark, GO, KEGG, CORUM complexes, ...) by :func:`enrich_latents`;
- *which perturbations move it?*  Its targets in the learned intervention graph are
  tested for enrichment of groups of perturbations (clusters, protein complexes) by
  :func:`perturbation_set_enrichment`.

The statistics are scipy's:

Over-representation (ORA)
    ``scipy.stats.hypergeom.sf(k - 1, M, n, N)``: ``P(X >= k)`` for
    ``X ~ Hypergeometric(M, n, N)``, the number of set members among ``N`` genes drawn
    without replacement from a universe of ``M`` genes of which ``n`` are in the set.
Rank-sum
    The one-sided Mann-Whitney / Wilcoxon rank-sum test of the set members' scores against
    the other genes' scores, with the tie-corrected variance and the normal approximation
    (optionally with a continuity correction of 1/2), as
    ``scipy.stats.mannwhitneyu(members, others, method="asymptotic")``.  It is computed
    here for all sets of a source at once (:func:`_rank_sum_from_ranks`) from the genes'
    ranks (``scipy.stats.rankdata``) and tie correction (``scipy.stats.tiecorrect``),
    which a per-set ``mannwhitneyu`` call would recompute for every set.
False discovery rate
    Benjamini-Hochberg, ``scipy.stats.false_discovery_control(p, method="bh")`` (NaN
    p-values stay NaN and do not count in the number of tests).

Gene names are matched case-insensitively throughout (``Ccnc`` matches ``CCNC``).

Only numpy, scipy and pandas are imported, so this module loads quickly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from scipy.special import ndtr

from scperturb_vae.data.genesets import case_map, restrict_gene_sets
from scperturb_vae.errors import InputError

__all__ = [
    "DIRECTIONS",
    "ENRICHMENT_COLUMNS",
    "PERTURBATION_ENRICHMENT_COLUMNS",
    "TESTS",
    "enrich_latents",
    "perturbation_set_enrichment",
]

logger = logging.getLogger("scperturb_vae")

#: The tests :func:`enrich_latents` runs: over-representation and rank-sum.
TESTS = ("ora", "rank")

#: The directions :func:`enrich_latents` tests: genes a latent raises, lowers, or moves
#: either way (by absolute effect).
DIRECTIONS = ("up", "down", "any")

#: Columns of the table returned by :func:`enrich_latents`.
ENRICHMENT_COLUMNS = (
    "latent", "gene_set", "source", "direction", "test", "statistic", "pvalue", "fdr",
    "set_size", "overlap", "mean_effect", "genes",
)

#: Columns of the table returned by :func:`perturbation_set_enrichment`.
PERTURBATION_ENRICHMENT_COLUMNS = (
    "latent", "group", "description", "statistic", "pvalue", "fdr", "group_size",
    "n_targets", "overlap", "perturbations",
)


#: Genes shown in the ``genes`` column of a rank-test row, at most.
MAX_LEADING_GENES = 20


# --------------------------------------------------------------------------- statistics
def _hypergeom_pvalues(k, M, n, N) -> np.ndarray:
    """``P(X >= k)`` for ``X ~ Hypergeometric(M, n, N)`` (arrays broadcast; scipy's ``sf`` is ``P(X > k)``)."""
    return stats.hypergeom.sf(np.asarray(k) - 1, M, n, N)


def _fdr(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy); NaN p-values stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = ~np.isnan(p)
    if tested.any():
        out[tested] = stats.false_discovery_control(p[tested], method="bh")
    return out


def _ranks(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Average ranks of ``values`` (ties share their mean rank) and their tie correction factor."""
    ranks = stats.rankdata(values)
    return ranks, float(stats.tiecorrect(ranks))


def _rank_sum_from_ranks(rank_sums, n1, n_total: int, tie_correction: float, alternative: str, continuity: bool):
    """AUC and one-sided rank-sum p-values of many sets at once, from the members' rank sums.

    The Mann-Whitney test of ``scipy.stats.mannwhitneyu(members, others,
    alternative=alternative, method="asymptotic", use_continuity=continuity)``, for arrays
    of sets: ``rank_sums`` and ``n1`` hold each set's sum of ranks and size, the ranks being
    those of all ``n_total`` scores (:func:`_ranks`).  ``U1 = R1 - n1 (n1 + 1) / 2``; the
    tested statistic is ``U = U1`` for ``"greater"`` and ``U = n1 n2 - U1`` for ``"less"``;
    under the null it has mean ``n1 n2 / 2`` and variance
    ``n1 n2 (n + 1) / 12 * tie_correction``, and the p-value is the normal upper tail of
    ``(U - n1 n2 / 2 - c) / sd`` with ``c = 1/2`` when ``continuity``.

    Returns
    -------
    auc, pvalue
        ``auc = U / (n1 n2)``: the probability that a random member's score exceeds a
        random other gene's (``"greater"``) or falls below it (``"less"``), ties counting
        one half; 0.5 is no difference.  Both NaN for an empty side or when all scores are
        equal.
    """
    rank_sums = np.asarray(rank_sums, dtype=np.float64)
    n1 = np.asarray(n1, dtype=np.float64)
    n2 = n_total - n1
    u1 = rank_sums - n1 * (n1 + 1) / 2.0
    u = u1 if alternative == "greater" else n1 * n2 - u1
    mean = n1 * n2 / 2.0
    var = n1 * n2 * (n_total + 1) / 12.0 * tie_correction
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - mean - (0.5 if continuity else 0.0)) / np.sqrt(var)
        auc = u / (n1 * n2)
    p = ndtr(-z)
    undefined = (n1 <= 0) | (n2 <= 0) | ~(var > 0)
    p = np.where(undefined, np.nan, p)
    auc = np.where(undefined, np.nan, auc)
    return auc, np.clip(p, 0.0, 1.0)


# --------------------------------------------------------------------------- latents
def _membership(sets: Mapping[str, Sequence[str]], universe: Sequence[str]) -> sp.csr_matrix:
    """Sets x universe 0/1 CSR matrix."""
    position = {g: i for i, g in enumerate(universe)}
    rows, cols = [], []
    for r, members in enumerate(sets.values()):
        cols.extend(position[g] for g in members)
        rows.extend([r] * len(members))
    data = np.ones(len(rows), dtype=np.float64)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(sets), len(universe)))


def _join(genes: Iterable[str], limit: int | None = None) -> str:
    genes = list(genes)
    return ",".join(genes if limit is None else genes[:limit])


def enrich_latents(
    effects: pd.DataFrame,
    gene_sets: Mapping[str, Mapping[str, Sequence[str]]],
    *,
    top_n: int = 50,
    min_size: int = 5,
    max_size: int = 500,
    tests: Sequence[str] = TESTS,
    directions: Sequence[str] = DIRECTIONS,
    continuity: bool = True,
) -> pd.DataFrame:
    """Gene-set enrichment of each latent's gene effects: up, down, and either way.

    For each source (a gene-set file), each latent (a row of ``effects``) and each
    direction (``up``: the genes the latent raises, ``down``: those it lowers, ``any``:
    those it moves most either way, i.e. the scores are the absolute effects):

    Universe
        The model's genes (``effects.columns``) that appear in at least one set of that
        source (names matched case-insensitively).  Sets are restricted to the universe
        and kept when they have between ``min_size`` and ``max_size`` genes there;
        ``set_size`` is that restricted size.
    ``ora`` (over-representation)
        The latent's ``top_n`` universe genes with the largest positive effects (``up``),
        the most negative ones (``down``) or the largest absolute ones (``any``) are the
        drawn genes (fewer when fewer genes have a nonzero effect of that sign; none for a
        latent without effect, whose p-values are then 1); ``pvalue`` is the
        hypergeometric upper tail ``P(X >= overlap)`` with ``M`` = universe size, ``n`` =
        ``set_size``, ``N`` = the number drawn
        (``scipy.stats.hypergeom.sf(overlap - 1, M, n, N)``); ``statistic`` is the fold
        enrichment ``(overlap / N) / (set_size / M)`` (0 when ``N = 0``); ``genes`` lists
        the overlapping genes, strongest effect first.
    ``rank`` (rank-sum over all universe genes)
        The one-sided Mann-Whitney test (``scipy.stats.mannwhitneyu``, asymptotic, with
        ``use_continuity=continuity``) of the members' effects against the other universe
        genes' effects: ``greater`` for ``up``, ``less`` for ``down``, ``greater`` on the
        absolute effects for ``any``.  ``statistic`` is the AUC ``U / (n1 n2)`` in the
        tested direction (0.5: no shift; 1: every member's effect beyond every other
        gene's); ``genes`` lists the members whose effect has the tested sign (any nonzero
        one for ``any``), strongest first (at most :data:`MAX_LEADING_GENES`).
        ``overlap`` is, for both tests, the number of members among the latent's drawn
        genes in that direction.
    ``mean_effect``
        The mean effect of the set's (universe) genes: signed for ``up`` and ``down``,
        the mean absolute effect for ``any``.

    The false discovery rate (Benjamini-Hochberg, ``scipy.stats.false_discovery_control``;
    NaN p-values are left out) is computed within each family ``(latent, source, test)``:
    all directions and all sets of one source, for one latent and one test.

    Why ``any``: a gene set often holds genes a latent moves in both directions (a
    pathway's activators and repressors; the ``programs`` simulation's programs have
    random signs), which splits its signal between ``up`` and ``down``.  On that
    simulation (6 latents, 300 genes, 25 per program; four sVAE+ runs with MCC
    0.65-0.78), the top set was the latent's own program for 3-4 of the 6 latents with
    ``up``/``down`` alone, and for 5-6 of 6 with ``any`` included.

    Parameters
    ----------
    effects
        Latents x genes scores (rows: latent names; columns: gene names).
    gene_sets
        Source -> (set name -> genes), as :func:`scperturb_vae.data.genesets.load_gene_sets` returns.
    top_n
        Genes per latent and direction for the over-representation test (at most the
        universe size).
    min_size, max_size
        Size filter of the restricted sets.
    tests
        A subset of ``("ora", "rank")``.
    directions
        A subset of ``("up", "down", "any")``.
    continuity
        Continuity correction of the rank-sum test's normal approximation.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`ENRICHMENT_COLUMNS`, sorted by ``latent`` (in the order of
        ``effects``' rows), then ``fdr``, then ``pvalue``; rows still tied (e.g. two sets
        wholly among the drawn genes) put first the set the latent moves more in the
        tested direction (larger ``mean_effect``, smaller for ``down``).  ``attrs["universe"]`` and
        ``attrs["n_sets"]`` give each source's universe size and number of tested sets.

    Raises
    ------
    InputError
        When a source shares no gene with ``effects.columns``, when no set of any source
        passes the size filter, for an unknown test, or bad sizes.
    """
    tests = tuple(tests)
    unknown = [t for t in tests if t not in TESTS]
    if unknown or not tests:
        raise InputError(f"unknown enrichment test(s) {unknown or tests}; choose among {', '.join(TESTS)}")
    directions = tuple(directions)
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise InputError(f"unknown direction(s) {unknown or directions}; choose among {', '.join(DIRECTIONS)}")
    if top_n < 1:
        raise InputError(f"top_n must be at least 1, not {top_n}")
    if min_size < 1 or max_size < min_size:
        raise InputError(f"gene-set sizes need 1 <= min_size <= max_size, got {min_size} and {max_size}")
    if not gene_sets:
        raise InputError("no gene sets given")
    if effects.shape[0] == 0 or effects.shape[1] == 0:
        raise InputError("the gene effects table is empty")
    genes = [str(g) for g in effects.columns]
    values_all = effects.to_numpy(dtype=np.float64)
    latents = [str(r) for r in effects.index]
    frames = []
    universe_sizes: dict[str, int] = {}
    set_counts: dict[str, int] = {}
    for source, sets in gene_sets.items():
        universe, kept = restrict_gene_sets(sets, genes, source=f"gene sets {source!r}",
                                            min_size=min_size, max_size=max_size)
        universe_sizes[source] = len(universe)
        set_counts[source] = len(kept)
        if not kept:
            logger.warning(
                f"gene sets {source!r}: no set has between {min_size} and {max_size} of the "
                f"{len(universe)} model genes it names; skipped"
            )
            continue
        logger.info(f"gene sets {source!r}: {len(kept)} of {len(sets)} sets tested on a universe of {len(universe)} genes")
        frames.append(_enrich_source(values_all, genes, latents, source, universe, kept, top_n, tests, directions,
                                     continuity))
    if not frames:
        raise InputError(
            f"no gene set has between {min_size} and {max_size} of the model's genes; "
            "lower the minimum size or give other gene sets"
        )
    table = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(latents)}
    table["_latent_order"] = table["latent"].map(order)
    table["_strength"] = -np.where(table["direction"] == "down", -table["mean_effect"], table["mean_effect"])
    table = table.sort_values(["_latent_order", "fdr", "pvalue", "_strength", "source", "gene_set", "test", "direction"],
                              kind="mergesort", na_position="last")
    table = table.drop(columns=["_latent_order", "_strength"]).reset_index(drop=True)
    table.attrs["universe"] = universe_sizes
    table.attrs["n_sets"] = set_counts
    return table


def _enrich_source(values_all, genes, latents, source, universe, sets, top_n, tests, directions,
                   continuity) -> pd.DataFrame:
    """Enrichment rows of one source (see :func:`enrich_latents`)."""
    column = {g: i for i, g in enumerate(genes)}
    cols = np.array([column[g] for g in universe])
    S = _membership(sets, universe)  # sets x universe
    set_names = list(sets)
    sizes = np.asarray(S.sum(axis=1)).ravel().astype(np.int64)
    M = len(universe)
    n_top = min(top_n, M)
    position = {g: i for i, g in enumerate(universe)}
    member_lists = [np.array([position[g] for g in members], dtype=np.int64) for members in sets.values()]
    universe_arr = np.asarray(universe, dtype=object)
    records: list[dict[str, Any]] = []
    for li, latent in enumerate(latents):
        scores = values_all[li, cols]
        ranks_up, tie_up = _ranks(scores)
        rank_sums_up = S @ ranks_up
        for direction in directions:
            signed = {"up": scores, "down": -scores, "any": np.abs(scores)}[direction]
            n_draw = min(n_top, int((signed > 0).sum()))  # only genes moved in this direction
            top = np.argsort(-signed, kind="mergesort")[:n_draw]
            in_top = np.zeros(M, dtype=np.float64)
            in_top[top] = 1.0
            overlap = np.rint(S @ in_top).astype(np.int64)
            mean_effect = (S @ (np.abs(scores) if direction == "any" else scores)) / sizes
            if "ora" in tests:
                p = _hypergeom_pvalues(overlap, M, sizes, n_draw)
                fold = (overlap / n_draw) / (sizes / M) if n_draw else np.zeros(len(sizes))
                for r, name in enumerate(set_names):
                    members = member_lists[r]
                    hit = members[in_top[members] > 0]
                    hit = hit[np.argsort(-signed[hit], kind="mergesort")]
                    records.append({
                        "latent": latent, "gene_set": name, "source": source, "direction": direction,
                        "test": "ora", "statistic": float(fold[r]), "pvalue": float(p[r]),
                        "set_size": int(sizes[r]), "overlap": int(overlap[r]), "mean_effect": float(mean_effect[r]),
                        "genes": _join(universe_arr[hit]),
                    })
            if "rank" in tests:
                if direction == "any":
                    ranks_abs, tie_abs = _ranks(signed)
                    auc, p = _rank_sum_from_ranks(S @ ranks_abs, sizes, M, tie_abs, "greater", continuity)
                else:
                    alternative = "greater" if direction == "up" else "less"
                    auc, p = _rank_sum_from_ranks(rank_sums_up, sizes, M, tie_up, alternative, continuity)
                for r, name in enumerate(set_names):
                    members = member_lists[r]
                    lead = members[signed[members] > 0]
                    lead = lead[np.argsort(-signed[lead], kind="mergesort")]
                    records.append({
                        "latent": latent, "gene_set": name, "source": source, "direction": direction,
                        "test": "rank", "statistic": float(auc[r]), "pvalue": float(p[r]),
                        "set_size": int(sizes[r]), "overlap": int(overlap[r]), "mean_effect": float(mean_effect[r]),
                        "genes": _join(universe_arr[lead], MAX_LEADING_GENES),
                    })
    table = pd.DataFrame.from_records(records, columns=[c for c in ENRICHMENT_COLUMNS if c != "fdr"])
    table["fdr"] = np.nan
    for index in table.groupby(["latent", "test"], sort=False).groups.values():
        table.loc[index, "fdr"] = _fdr(table.loc[index, "pvalue"].to_numpy())
    return table[list(ENRICHMENT_COLUMNS)]


# --------------------------------------------------------------------------- perturbations
def perturbation_set_enrichment(
    targets: Mapping[str, Sequence[str]],
    groups: Mapping[str, Sequence[str]],
    universe: Sequence[str],
    *,
    min_size: int = 2,
    descriptions: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Over-representation of perturbation groups among each latent's targets.

    For each latent with at least one target, each group (a cluster of perturbations,
    or a protein complex whose subunits are the perturbed genes) restricted to the
    universe and holding at least ``min_size`` perturbations there is tested with the
    hypergeometric upper tail: ``M`` = universe size, ``n`` = ``group_size``, ``N`` =
    ``n_targets`` (the latent's targets in the universe), ``k`` = ``overlap``.
    ``statistic`` is the fold enrichment ``(k / N) / (n / M)``.  The FDR (Benjamini-
    Hochberg) is computed per latent over its groups.  Names are matched
    case-insensitively (the universe's spelling is reported).

    Parameters
    ----------
    targets
        Latent -> its targeting perturbations (e.g. from
        :func:`scperturb_vae.tl.targets.perturbation_targets`).
    groups
        Group -> member perturbations.
    universe
        All perturbations of the screen (the rows of the intervention graph).
    min_size
        Smallest group (within the universe) that is tested.
    descriptions
        Optional group -> description, copied to the ``description`` column.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`PERTURBATION_ENRICHMENT_COLUMNS`, sorted by latent (in the order of
        ``targets``), then ``fdr``, then ``pvalue``; ``perturbations`` lists the
        overlapping targets (comma-joined).  Empty (with these columns) when no latent
        has a target.

    Raises
    ------
    InputError
        When no group has ``min_size`` members among the universe.
    """
    lookup = case_map(universe)
    M = len(lookup)
    restricted: dict[str, list[str]] = {}
    for name, members in groups.items():
        mapped = list(dict.fromkeys(lookup[str(m).upper()] for m in members if str(m).upper() in lookup))
        if len(mapped) >= min_size:
            restricted[name] = mapped
    if not restricted:
        example = next((str(m) for members in groups.values() for m in members), "(none)")
        raise InputError(
            f"no perturbation group has {min_size} or more members among the screen's {M} perturbations "
            f"(e.g. group member {example!r}, screen perturbation {str(universe[0]) if len(universe) else '(none)'!r})"
        )
    descriptions = descriptions or {}
    records = []
    names = list(restricted)
    sizes = np.array([len(restricted[g]) for g in names])
    for latent, members in targets.items():
        hits = {lookup[str(m).upper()] for m in members if str(m).upper() in lookup}
        if not hits:
            continue
        n_targets = len(hits)
        overlaps = [[m for m in restricted[g] if m in hits] for g in names]
        k = np.array([len(o) for o in overlaps])
        p = _hypergeom_pvalues(k, M, sizes, n_targets)
        fdr = _fdr(p)
        for i, g in enumerate(names):
            records.append({
                "latent": str(latent), "group": g, "description": str(descriptions.get(g, "")),
                "statistic": float((k[i] / n_targets) / (sizes[i] / M)), "pvalue": float(p[i]),
                "fdr": float(fdr[i]), "group_size": int(sizes[i]), "n_targets": n_targets,
                "overlap": int(k[i]), "perturbations": _join(sorted(overlaps[i])),
            })
    table = pd.DataFrame.from_records(records, columns=list(PERTURBATION_ENRICHMENT_COLUMNS))
    if table.empty:
        return table
    order = {str(name): i for i, name in enumerate(targets)}
    table["_order"] = table["latent"].map(order)
    table = table.sort_values(["_order", "fdr", "pvalue", "group"], kind="mergesort")
    return table.drop(columns="_order").reset_index(drop=True)
