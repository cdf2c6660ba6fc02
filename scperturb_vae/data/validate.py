"""Open and validate a perturbation AnnData (Perturb-seq, CROP-seq, ...).

Every command of the toolkit opens its input through :func:`open_perturbation_adata`
(a path) or :func:`validate_perturbation_adata` (an in-memory :class:`anndata.AnnData`).
Both check, once and with one clear line per problem, what the models need:

- the count matrix (``X`` or a layer) holds finite, non-negative, integer-valued counts
  (:mod:`scperturb_vae.data.counts`);
- cell and gene names are unique; no cell and no gene is empty;
- one ``obs`` column holds perturbation labels (gene names; combinations written
  ``"A+B"``), and one of its labels marks the control cells
  (:mod:`scperturb_vae.data.labels`, which also describes the control detection).

Every mistake a user can fix is raised as :class:`~scperturb_vae.errors.InputError`.
Nothing here modifies the AnnData or writes to the input file: files are opened
read-only and fully read into memory (:mod:`scperturb_vae.data.reading`), and labels
are processed on copies.

This module imports neither scvi nor torch, and imports anndata only when a file is
read, so that it loads quickly.
"""

from __future__ import annotations

import logging
import os
import pathlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.data.counts import check_counts, check_no_empty_cells_or_genes, counts_matrix
from scperturb_vae.data.labels import (
    COMBINATION_SEP,
    guide_level_controls,
    preview,
    resolve_control_label,
    resolve_perturbation_key,
    split_combination,
    suspect_combinations,
)
from scperturb_vae.data.reading import file_sha256, read_h5ad_checked
from scperturb_vae.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "PerturbationData",
    "open_perturbation_adata",
    "validate_perturbation_adata",
]

logger = logging.getLogger("scperturb_vae")


# --------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)  # eq=False: pandas fields do not compare to a bool
class PerturbationData:
    """A validated perturbation AnnData and what was learnt about it.

    Attributes
    ----------
    adata
        The validated in-memory AnnData (the very object passed in or read).
    path
        The file it was read from, or ``None``.
    perturbation_key
        The ``obs`` column holding the labels.
    control_label
        The label of the control cells.
    layer
        The layer holding the counts, or ``None`` for ``X``.
    perturbations
        Single perturbations (combinations split), sorted, control excluded.
    labels
        Distinct raw labels (combinations kept whole), control first, then sorted.
    n_cells
        Cells per raw label (index: label, in the order of ``labels``).
    n_cells_per_perturbation
        Cells carrying each single perturbation, alone or within a combination
        (index: perturbation, in the order of ``perturbations``).
    n_combination_cells
        Cells whose label is a combination.
    small_perturbations
        Single perturbations with fewer than ``min_cells`` cells.
    min_cells
        The threshold used for ``small_perturbations``.
    sha256
        SHA-256 hex digest of the input file, or ``None`` when not read from a file.
    """

    adata: anndata.AnnData = field(repr=False)
    path: pathlib.Path | None
    perturbation_key: str
    control_label: str
    layer: str | None
    perturbations: list[str] = field(repr=False)
    labels: list[str] = field(repr=False)
    n_cells: pd.Series = field(repr=False)
    n_cells_per_perturbation: pd.Series = field(repr=False)
    n_combination_cells: int
    small_perturbations: list[str] = field(repr=False)
    min_cells: int
    sha256: str | None = None

    @property
    def n_control_cells(self) -> int:
        """Number of control cells."""
        return int(self.n_cells[self.control_label])

    def summary(self) -> str:
        """A few human-readable lines describing the data."""
        source = str(self.path) if self.path is not None else "in-memory AnnData"
        counts = f"layer {self.layer!r}" if self.layer is not None else "X"
        lines = [
            f"{source}: {self.adata.n_obs} cells x {self.adata.n_vars} genes (counts in {counts})",
            f"perturbations: {len(self.perturbations)} in column {self.perturbation_key!r}; "
            f"{self.n_control_cells} control cells ({self.control_label!r})",
            f"combinations: {self.n_combination_cells} cells in "
            f"{sum(COMBINATION_SEP in label for label in self.labels)} combination labels",
        ]
        if self.small_perturbations:
            lines.append(
                f"small perturbations (< {self.min_cells} cells): "
                f"{preview(self.small_perturbations)}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def _check_unique_names(names: pd.Index, kind: str, fix: str) -> None:
    """Raise when ``names`` (cell or gene names) hold duplicates."""
    if names.is_unique:
        return
    duplicated = names[names.duplicated()]
    raise InputError(
        f"{len(duplicated)} duplicate {kind} names (e.g. {str(duplicated[0])!r}); "
        f"make them unique first (adata.{fix}())"
    )


def _split_labels(labels: list[str], control: str) -> dict[str, list[str]]:
    """Split every distinct label into parts; the control may not sit in a combination."""
    parts_of: dict[str, list[str]] = {}
    for label in labels:
        if label == control:
            parts_of[label] = []
            continue
        parts = split_combination(label)
        if len(parts) > 1 and control.strip() in parts:
            raise InputError(
                f"label {label!r} combines the control {control!r} with a perturbation; "
                "relabel such cells first"
            )
        parts_of[label] = parts
    return parts_of


def _count_per_perturbation(
    n_cells: pd.Series, parts_of: dict[str, list[str]]
) -> pd.Series:
    """Cells per single perturbation, counting a combination for each of its parts."""
    totals: dict[str, int] = {}
    for label, parts in parts_of.items():
        for part in dict.fromkeys(parts):
            totals[part] = totals.get(part, 0) + int(n_cells[label])
    names = sorted(totals)
    return pd.Series([totals[n] for n in names], index=pd.Index(names, dtype=object),
                     dtype=np.int64, name="n_cells")


def _warn_label_shapes(labels: list[str], control: str) -> None:
    """Warn about labels that look like combinations or guide-level controls but are not read so."""
    for label, sep, parts in suspect_combinations(labels):
        logger.warning(
            "label %r looks like the combination of %s (separator %r), but only 'A+B' is read as a "
            "combination: it trains as a new single perturbation (relabel it %r to compose them)",
            label, " and ".join(map(repr, parts)), sep, "+".join(parts),
        )
    guides = [g for g in guide_level_controls(labels) if g != control]
    if guides:
        logger.warning(
            "%d label(s) look like guide-level controls (%s) but train as perturbations; only %r is "
            "the control (merge them into it to use them as controls)", len(guides), preview(guides), control,
        )


def _warn_small(small: list[str], min_cells: int) -> None:
    """Log one warning line naming the perturbations with few cells."""
    if small:
        logger.warning(
            "%d perturbation(s) have fewer than %d cells: %s",
            len(small), min_cells, preview(small),
        )


def validate_perturbation_adata(
    adata: anndata.AnnData,
    *,
    perturbation_key: str | None = None,
    control_label: str | None = None,
    layer: str | None = None,
    min_cells: int = 20,
    path: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    allow_empty_genes: bool = False,
) -> PerturbationData:
    """Validate a perturbation AnnData without modifying it.

    Parameters
    ----------
    adata
        The AnnData (in memory; a backed one works but is read block by block).
    perturbation_key
        The ``obs`` column with the labels, or ``None`` to detect it (see
        :func:`resolve_perturbation_key`).
    control_label
        The label of the control cells, or ``None`` to detect it (see
        :func:`resolve_control_label`).
    layer
        The layer holding raw counts, or ``None`` for ``X``.
    min_cells
        Perturbations with fewer cells are listed in ``small_perturbations`` and
        logged as a warning (not an error).
    path
        The file the AnnData came from, recorded in the result.
    sha256
        The file's digest, recorded in the result.
    allow_empty_genes
        Accept genes without counts (a subset of a validated file, e.g. the training cells
        of a held-out split, may leave a rare gene at zero).

    Returns
    -------
    PerturbationData

    Raises
    ------
    InputError
        On the first problem found, in this order: missing layer; counts that are
        not raw counts; duplicate cell or gene names; cells or genes without counts;
        perturbation column; control label; only control cells; a combination
        holding the control.
    """
    if isinstance(min_cells, bool) or not isinstance(min_cells, (int, np.integer)) or min_cells < 0:
        raise InputError(f"min_cells must be a non-negative integer, got {min_cells!r}")
    X, what = counts_matrix(adata, layer)
    try:
        check_counts(X, what=what)
    except InputError as err:
        others = [name for name in integer_layers(adata) if name != layer] if not adata.isbacked else []
        if not others:
            raise
        raise InputError(f"{err}; {', '.join(repr(n) for n in others)} "
                         f"hold{'s' if len(others) == 1 else ''} integer counts: pass --layer {others[0]}") from None
    _check_unique_names(adata.obs_names, "cell", "obs_names_make_unique")
    _check_unique_names(adata.var_names, "gene", "var_names_make_unique")
    check_no_empty_cells_or_genes(X, adata.obs_names, adata.var_names, what, 10_000, allow_empty_genes)

    key = resolve_perturbation_key(adata.obs, perturbation_key)
    column = adata.obs[key].astype(str).copy()  # a copy: adata.obs is left alone
    control = resolve_control_label(column, control_label)
    n_cells = column.value_counts()
    if len(n_cells) == 1:
        raise InputError(
            f"only control cells ({control!r}) in column {key!r}: need at least one perturbation"
        )
    labels = [control] + sorted(label for label in n_cells.index if label != control)
    n_cells = pd.Series(
        [int(n_cells[label]) for label in labels],
        index=pd.Index(labels, dtype=object), dtype=np.int64, name="n_cells",
    )
    parts_of = _split_labels(labels, control)
    _warn_label_shapes(labels, control)
    per_perturbation = _count_per_perturbation(n_cells, parts_of)
    n_combination_cells = int(sum(n_cells[lab] for lab, p in parts_of.items() if len(p) > 1))
    small = [p for p, n in per_perturbation.items() if n < min_cells]
    _warn_small(small, int(min_cells))
    return PerturbationData(
        adata=adata,
        path=pathlib.Path(path) if path is not None else None,
        perturbation_key=key,
        control_label=control,
        layer=layer,
        perturbations=list(per_perturbation.index),
        labels=labels,
        n_cells=n_cells,
        n_cells_per_perturbation=per_perturbation,
        n_combination_cells=n_combination_cells,
        small_perturbations=small,
        min_cells=int(min_cells),
        sha256=sha256,
    )


#: ``--layer raw``: the counts kept in ``adata.raw`` (when no layer has that name)
RAW_LAYER = "raw"


def _counts_from_raw(adata) -> None:
    """Copy ``adata.raw``'s counts of the genes of ``X`` into ``layers["raw"]`` (in memory only)."""
    if adata.raw is None:
        raise InputError("--layer raw: the file has neither a layer named 'raw' nor adata.raw")
    missing = adata.var_names.difference(adata.raw.var_names)
    if len(missing):
        raise InputError(f"--layer raw: {len(missing)} genes of X are not in adata.raw (e.g. {missing[0]!r})")
    columns = adata.raw.var_names.get_indexer(adata.var_names)
    adata.layers[RAW_LAYER] = adata.raw.X[:, columns]


def integer_layers(adata, sample_rows: int = 2000) -> list[str]:
    """Layers (and ``"raw"`` for ``adata.raw``) whose first rows hold non-negative integers."""
    found = []
    candidates = [(name, adata.layers[name]) for name in adata.layers.keys()]
    if adata.raw is not None and RAW_LAYER not in adata.layers:
        candidates.append((RAW_LAYER, adata.raw.X))
    for name, matrix in candidates:
        block = matrix[: min(sample_rows, matrix.shape[0])]
        values = block.data if sp.issparse(block) else np.asarray(block).ravel()
        values = np.asarray(values)
        if values.size and np.issubdtype(values.dtype, np.number) and (values >= 0).all() \
                and np.array_equal(values, np.round(values)):
            found.append(str(name))
    return found


def open_perturbation_adata(
    path: str | os.PathLike[str],
    *,
    perturbation_key: str | None = None,
    control_label: str | None = None,
    layer: str | None = None,
    min_cells: int = 20,
    backed: bool = False,
) -> PerturbationData:
    """Read an ``.h5ad`` file read-only and validate it.

    Parameters
    ----------
    path
        The ``.h5ad`` file; it is only read, never written.
    perturbation_key, control_label, layer, min_cells
        As in :func:`validate_perturbation_adata`.
    backed
        Leave ``X`` on disk (opened read-only, backed): validation reads it in row
        blocks, and training reads minibatches from the file.  Counts must be in ``X``.

    Returns
    -------
    PerturbationData
        With ``path`` and ``sha256`` (of the file's bytes) filled in.

    Raises
    ------
    InputError
        When the file cannot be read or its contents fail validation.
    """
    if backed and layer is not None:
        raise InputError("--backed reads the counts from X; a --layer cannot be read from disk (write the counts to X first)")
    adata = read_h5ad_checked(path, backed=backed)
    if layer == RAW_LAYER and RAW_LAYER not in adata.layers:
        _counts_from_raw(adata)
    resolved = pathlib.Path(path).expanduser()
    return validate_perturbation_adata(
        adata,
        perturbation_key=perturbation_key,
        control_label=control_label,
        layer=layer,
        min_cells=min_cells,
        path=resolved,
        sha256=file_sha256(resolved),
    )
