"""Which perturbations are held out, and which cells adapt, evaluate or train.

1. **The held-out set** (:func:`resolve_holdout`): a list of perturbations, or a cluster of a
   cluster table or of clusters computed from the data.
2. **The split** (:func:`make_split`).  Every cell whose label holds a held-out perturbation
   (alone or in a combination) is held out.  The cells of each held-out label are split at
   random (seeded) into an *adaptation* part (``adapt_fraction``) and an *evaluation* part;
   all other cells (training perturbations and controls) train the model.

Only numpy and pandas: the commands split the data before torch is imported.  Adapting the
new perturbations' prior and scoring them is :mod:`scperturb_vae.tl.heldout`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scperturb_vae.data.labels import COMBINATION_SEP, split_combination
from scperturb_vae.data.validate import PerturbationData
from scperturb_vae.errors import InputError

logger = logging.getLogger("scperturb_vae")

__all__ = ["PARTS", "HoldoutSpec", "holdout_split", "make_split", "resolve_holdout"]


#: the parts of a held-out split, as written in ``split.csv``
PARTS = ("train", "validation", "heldout_adapt", "heldout_eval")


@dataclass
class HoldoutSpec:
    """The held-out perturbations and where they came from."""

    perturbations: list[str]
    #: the cluster's name, or ``"custom"`` for ``--holdout-perturbations``
    name: str
    #: ``"computed"``, the cluster file's path, or ``"list"``
    source: str
    #: the whole cluster table when clusters were used (perturbation, cluster, ...)
    clusters: pd.DataFrame | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "perturbations": list(self.perturbations)}


def _parse_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def resolve_holdout(
    data: PerturbationData,
    *,
    holdout: str | None = None,
    holdout_perturbations=None,
    clusters: str | None = None,
    n_clusters: int = 8,
    n_genes: int = 500,
) -> HoldoutSpec:
    """Resolve ``--holdout CLUSTER`` or ``--holdout-perturbations A,B`` into perturbations.

    A cluster name refers to the user's cluster table (``clusters``, read with
    :func:`scperturb_vae.data.cluster_tables.read_cluster_table`) or, without one, to the clusters computed
    from the data (:func:`scperturb_vae.tl.clusters.compute_perturbation_clusters` with
    ``n_clusters`` and ``n_genes``; deterministic, so ``train`` and ``evaluate`` agree).
    """
    names = _parse_list(holdout_perturbations)
    if holdout is not None and names:
        raise InputError("give either --holdout CLUSTER or --holdout-perturbations A,B,..., not both")
    if holdout is None and not names:
        raise InputError("nothing to hold out: give --holdout CLUSTER or --holdout-perturbations A,B,...")
    known = set(data.perturbations)
    table = None
    if names:
        labels = set(data.labels)
        # a combination "A+B" of trained singles holds out that label only: its parts keep training
        unknown = [p for p in names if p not in known and not (COMBINATION_SEP in p and p in labels)]
        if unknown:
            raise InputError(
                f"held-out perturbation(s) {', '.join(unknown[:5])} not in column {data.perturbation_key!r} "
                f"(it has {len(known)} perturbations, e.g. {', '.join(sorted(known)[:5])})"
            )
        spec = HoldoutSpec(sorted(set(names)), "custom", "list")
    else:
        from scperturb_vae.data.cluster_tables import cluster_members, natural_key, read_cluster_table
        from scperturb_vae.tl.clusters import compute_perturbation_clusters

        if clusters is not None:
            # read whole: a cluster none of whose members is in the data is named as such,
            # not reported as unknown
            table = read_cluster_table(clusters)
            source = str(clusters)
        else:
            table = compute_perturbation_clusters(
                data.adata, data.perturbation_key, data.control_label,
                n_clusters=n_clusters, n_genes=n_genes, layer=data.layer,
            )
            source = "computed"
        members = cluster_members(table)
        holdout = str(holdout)
        if holdout not in members:
            available = ", ".join(sorted(members, key=natural_key)[:12])
            where = f"the clusters of {clusters}" if clusters is not None else f"the {len(members)} computed clusters"
            raise InputError(f"unknown cluster {holdout!r}; {where} are named {available}")
        chosen = sorted(set(members[holdout]) & known)
        if not chosen:
            raise InputError(
                f"cluster {holdout!r} has no perturbation present in column {data.perturbation_key!r} "
                f"(its members: {', '.join(sorted(members[holdout])[:5])}"
                f"{', ...' if len(members[holdout]) > 5 else ''})"
            )
        if clusters is not None:  # the members present in the data, as computed clusters are
            table = table[table["perturbation"].astype(str).isin(known)].reset_index(drop=True)
        spec = HoldoutSpec(chosen, holdout, source, table)
    if set(spec.perturbations) >= known:
        raise InputError(
            f"holding out {spec.name!r} would hold out every perturbation ({len(known)}); "
            "nothing would be left to train the perturbation parameters on"
        )
    return spec


def make_split(
    labels: pd.Series,
    control_label: str,
    heldout: list[str],
    *,
    adapt_fraction: float = 0.5,
    seed: int = 0,
) -> pd.Series:
    """Assign each cell to ``train``, ``heldout_adapt`` or ``heldout_eval``.

    ``labels`` are the cells' raw labels (index: cell names).  A cell is held out when any
    single perturbation of its label is in ``heldout``, or when its label is a combination
    ``A+B`` listed in ``heldout`` (then ``A`` and ``B`` alone keep training).  The cells of each held-out label are
    shuffled with ``numpy.random.default_rng(seed)`` (labels visited in sorted order) and the
    first ``round(adapt_fraction * n)`` (at least 1, at most ``n - 1``) adapt.

    Raises
    ------
    InputError
        When a held-out label has fewer than 2 cells, or no cell is held out.
    """
    if not 0.0 < adapt_fraction < 1.0:
        raise InputError(f"the adaptation fraction must be between 0 and 1, not {adapt_fraction}")
    labels = labels.astype(str)
    held = {p for p in heldout if COMBINATION_SEP not in p}
    held_combinations = {frozenset(split_combination(p, COMBINATION_SEP)) for p in heldout if COMBINATION_SEP in p}
    parts = pd.Series("train", index=labels.index, dtype=object, name="part")
    values = labels.to_numpy()
    rng = np.random.default_rng(seed)
    held_labels = sorted(
        lab for lab in pd.unique(values)
        if lab != control_label and (held & set(split_combination(lab, COMBINATION_SEP))
                                     or frozenset(split_combination(lab, COMBINATION_SEP)) in held_combinations)
    )
    if not held_labels:
        raise InputError("no cell carries a held-out perturbation")
    # rows of each label in one pass (a comparison per held-out label would cost
    # n_labels x n_cells when a large cluster is held out)
    rows_of = pd.Series(np.arange(len(values))).groupby(values, sort=False).indices
    for lab in held_labels:
        rows = np.asarray(rows_of[lab], dtype=np.int64)  # ascending, as np.flatnonzero
        if len(rows) < 2:
            raise InputError(
                f"held-out perturbation {lab!r} has {len(rows)} cell: at least 2 are needed to split it "
                "into adaptation and evaluation cells"
            )
        rows = rows[rng.permutation(len(rows))]
        n_adapt = int(min(len(rows) - 1, max(1, round(adapt_fraction * len(rows)))))
        parts.iloc[rows[:n_adapt]] = "heldout_adapt"
        parts.iloc[rows[n_adapt:]] = "heldout_eval"
    return parts


def holdout_split(data: PerturbationData, *, holdout=None, holdout_perturbations=None, clusters=None,
                  n_clusters: int = 8, adapt_fraction: float = 0.5, seed: int = 0):
    """The held-out perturbations (:func:`resolve_holdout`) and the cells' parts (:func:`make_split`)."""
    spec = resolve_holdout(data, holdout=holdout, holdout_perturbations=holdout_perturbations, clusters=clusters,
                           n_clusters=n_clusters)
    parts = make_split(data.adata.obs[data.perturbation_key], data.control_label, spec.perturbations,
                       adapt_fraction=adapt_fraction, seed=seed)
    logger.info(
        f"holding out {spec.name!r} ({len(spec.perturbations)} perturbations: {', '.join(spec.perturbations[:8])}"
        f"{', ...' if len(spec.perturbations) > 8 else ''}): {int((parts == 'heldout_adapt').sum())} adaptation and "
        f"{int((parts == 'heldout_eval').sum())} evaluation cells; {int((parts == 'train').sum())} cells train"
    )
    return spec, parts
