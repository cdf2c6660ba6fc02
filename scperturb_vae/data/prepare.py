"""Turn a published screen's ``.h5ad`` into the file ``scvae train`` expects.

``scvae prepare`` (:func:`prepare_screen`) reads one ``.h5ad`` file read-only and writes
a new one in which

- ``obs["perturbation"]`` holds one label per cell: the control cells are labelled
  ``"control"``, a single perturbation by its gene, a combination by its genes sorted and
  joined with ``"+"`` (``"A+B"``); a part equal to the control label is dropped from a
  combination (``"A_control"`` is the single perturbation ``"A"``);
- cells without a label (NaN, None, empty) are dropped, or labelled ``"unassigned"`` with
  ``keep_unassigned``; cells and genes without any count are dropped;
- ``X`` holds the raw counts as a CSR matrix of integers (``int32``; ``int64`` only when a
  count needs it), checked to be finite, non-negative and integer-valued and converted
  block by block: a dense matrix (the Replogle 2022 files store ``X`` dense) is never read
  whole, and a sparse one is never densified;
- ``var_names`` are unique gene symbols when a symbol column exists (the original names
  are kept in ``var["gene_id"]``);
- ``obs["batch"]`` is the GEM group (``gem_group``) when the file has one;
- ``uns["scvae_prepare"]`` records the source file, its SHA-256, the layout, and every
  mapping, renaming and drop done.

Columns of ``obs`` that ``scvae train`` would also take for the perturbation column
(``gene``, ``target_gene``, ...; see :data:`~scperturb_vae.data.validate.PERTURBATION_KEY_CANDIDATES`)
are renamed with the prefix ``orig_`` (``orig_gene``), and the source ``perturbation``
column becomes ``orig_perturbation``, so that the prepared file has exactly one
perturbation column.  The control is renamed ``"control"`` (the original label is in
``uns["scvae_prepare"]["control_label_in"]`` and in the label mapping) so that every
prepared file trains with the same ``--control control``.

Layouts
-------
``replogle``
    The single-cell files of Replogle et al. 2022 (``*_raw_singlecell_01.h5ad`` on
    plus.figshare.com): ``obs`` columns ``gene`` (the perturbed gene), ``gene_id``,
    ``transcript``, ``gene_transcript``, ``sgID_AB``, ``mitopercent``, ``UMI_count``,
    ``gem_group``, ...; control ``non-targeting``; raw counts in a dense float32 ``X``;
    ``var`` index Ensembl gene IDs with symbols in ``var["gene_name"]``.
``scperturb``
    The harmonised files of scPerturb (Peidli et al. 2024): ``obs["perturbation"]``
    (control ``control``, combinations joined with ``"_"`` and counted in
    ``obs["nperts"]``, unassigned cells NaN), ``perturbation_type``, ``celltype``, ...;
    counts in ``X``; ``var`` index gene symbols.
``generic``
    Any other file: the label column is ``perturbation_key`` or the one candidate column
    present, combinations are written ``"A+B"``.
``auto``
    The layout is detected from the ``obs`` columns (:func:`detect_layout`): ``gene`` with
    ``sgID_AB`` or ``gem_group`` is Replogle 2022, ``perturbation`` with ``nperts`` or
    ``perturbation_type`` is scPerturb, neither is generic, both is an error.

Splitting ``"_"``-joined scPerturb labels
-----------------------------------------
Gene symbols may themselves hold ``"_"``, guide-level labels look like ``"ZAP70_1"``, and
scPerturb's ``nperts`` does not always count the genes of a label (it is 2 for all
the single-gene labels of the Datlinger et al. 2021 test file).  So a label is
split at ``"_"`` only when every part is itself a label of the file (``"A_B"`` where ``"A"``
and ``"B"`` label other cells, or the control), and never where its cells have
``nperts < 2``.  Labels of cells with ``nperts >= 2`` that hold ``"_"`` but are not split
are kept whole, reported in a warning and listed in ``uns["scvae_prepare"]["unsplit_labels"]``:
relabel them (``"A+B"``) and use ``--layout generic`` where they are combinations.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.data.validate import (
    COMBINATION_SEP,
    PERTURBATION_KEY_CANDIDATES,
    PerturbationData,
    _check_file,
    _is_numeric_column,
    _missing_label_mask,
    _preview,
    _short_reason,
    check_counts,
    file_sha256,
    resolve_control_label,
    resolve_perturbation_key,
    validate_perturbation_adata,
)
from scperturb_vae.errors import InputError, OutputError
from scperturb_vae.io import atomic_path, check_output

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "BATCH_KEY",
    "LAYOUTS",
    "PREPARED_CONTROL",
    "PREPARED_KEY",
    "SYMBOL_COLUMNS",
    "UNASSIGNED_LABEL",
    "UNS_KEY",
    "PreparedScreen",
    "detect_layout",
    "prepare_adata",
    "prepare_screen",
]

logger = logging.getLogger("scperturb_vae")

#: Layouts :func:`prepare_screen` knows; ``"auto"`` detects one of the others.
LAYOUTS: tuple[str, ...] = ("auto", "replogle", "scperturb", "generic")
#: The ``obs`` column of the labels in a prepared file.
PREPARED_KEY = "perturbation"
#: The label of the control cells in a prepared file.
PREPARED_CONTROL = "control"
#: The label given to cells without one when they are kept (``keep_unassigned``).
UNASSIGNED_LABEL = "unassigned"
#: The ``obs`` column of the technical batch (GEM group) in a prepared file.
BATCH_KEY = "batch"
#: The ``uns`` key of the preparation record.
UNS_KEY = "scvae_prepare"
#: Prefix of renamed source columns (``gene`` -> ``orig_gene``).
ORIGINAL_PREFIX = "orig_"

#: ``obs`` columns of the Replogle 2022 files: ``gene`` plus at least one of these.
_REPLOGLE_MARKERS = ("sgID_AB", "gem_group")
#: ``obs`` columns of the scPerturb files: ``perturbation`` plus at least one of these.
_SCPERTURB_MARKERS = ("nperts", "perturbation_type")
#: The label column of each layout (``generic`` detects it).
_LAYOUT_KEY = {"replogle": "gene", "scperturb": "perturbation"}
#: The separator of combinations in each layout's labels.
_LAYOUT_SEP = {"replogle": COMBINATION_SEP, "scperturb": "_", "generic": COMBINATION_SEP}
_LAYOUT_NAME = {
    "replogle": "Replogle 2022",
    "scperturb": "scPerturb",
    "generic": "generic",
}
#: ``var`` columns holding gene symbols, tried in this order when the ``var`` names are
#: Ensembl IDs and no column is given.
SYMBOL_COLUMNS: tuple[str, ...] = ("gene_name", "gene_symbol", "gene_symbols", "symbol", "feature_name")
_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
#: Matrix elements read at once from a dense matrix (2**25: 128 MiB of float32).
_BLOCK_ELEMENTS = 1 << 25
_INT32_MAX = np.iinfo(np.int32).max


# --------------------------------------------------------------------------- layout


def detect_layout(obs_columns: Any) -> tuple[str, str]:
    """Detect the layout of a screen from its ``obs`` column names.

    Parameters
    ----------
    obs_columns
        The column names (``adata.obs.columns``).

    Returns
    -------
    tuple of str
        The layout (``"replogle"``, ``"scperturb"`` or ``"generic"``) and a short
        reason naming the columns it was detected from.

    Raises
    ------
    InputError
        When the columns fit both the Replogle 2022 and the scPerturb layouts.
    """
    columns = {str(c) for c in obs_columns}
    replogle = ["gene"] + [c for c in _REPLOGLE_MARKERS if c in columns] if "gene" in columns else []
    scperturb = (
        ["perturbation"] + [c for c in _SCPERTURB_MARKERS if c in columns]
        if "perturbation" in columns else []
    )
    is_replogle = len(replogle) > 1
    is_scperturb = len(scperturb) > 1
    if is_replogle and is_scperturb:
        raise InputError(
            "ambiguous layout: the obs columns fit both the Replogle 2022 layout "
            f"({', '.join(replogle)}) and the scPerturb layout ({', '.join(scperturb)}); "
            "pass --layout replogle or --layout scperturb"
        )
    if is_replogle:
        return "replogle", f"obs columns {', '.join(replogle)}"
    if is_scperturb:
        return "scperturb", f"obs columns {', '.join(scperturb)}"
    return "generic", (
        "no Replogle 2022 (gene with sgID_AB/gem_group) or scPerturb "
        "(perturbation with nperts/perturbation_type) columns"
    )


def _resolve_layout(layout: str, obs: pd.DataFrame) -> tuple[str, str]:
    """The layout to use and how it was chosen."""
    if not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    layout = layout.lower()
    if layout == "auto":
        found, reason = detect_layout(obs.columns)
        return found, f"detected from {reason}" if found != "generic" else f"detected ({reason})"
    return layout, "given"


def _label_column(obs: pd.DataFrame, layout: str, perturbation_key: str | None) -> str:
    """The ``obs`` column holding the source labels (missing labels allowed)."""
    if perturbation_key is None and layout in _LAYOUT_KEY:
        perturbation_key = _LAYOUT_KEY[layout]
        if perturbation_key not in obs.columns:
            available = _preview([str(c) for c in obs.columns]) or "(none)"
            raise InputError(
                f"layout {layout}: obs has no column {perturbation_key!r} (the {_LAYOUT_NAME[layout]} "
                f"perturbation column); pass --perturbation-key (available columns: {available})"
            )
    return resolve_perturbation_key(obs, perturbation_key, allow_missing=True)


# --------------------------------------------------------------------------- labels


def _nperts_per_label(
    obs: pd.DataFrame, codes: np.ndarray, n_labels: int
) -> list[int | None]:
    """``nperts`` of each distinct label (``None`` where missing or where its cells disagree)."""
    if "nperts" not in obs.columns:
        return [None] * n_labels
    values = pd.to_numeric(pd.Series(np.asarray(obs["nperts"], dtype=object)), errors="coerce")
    frame = pd.DataFrame({"code": codes, "n": values.to_numpy(dtype=np.float64)})
    frame = frame[frame["code"] >= 0].dropna()
    result: list[int | None] = [None] * n_labels
    if frame.empty:
        return result
    grouped = frame.groupby("code")["n"]
    low, high = grouped.min(), grouped.max()
    for code in low.index:
        if low[code] == high[code] and float(low[code]).is_integer():
            result[int(code)] = int(low[code])
    return result


def _label_parts(
    label: str, layout: str, nperts: int | None, vocabulary: set[str]
) -> tuple[list[str], bool]:
    """Split one source label into its single perturbations.

    Returns the parts and whether the label looked like a combination (``"_"`` with
    ``nperts >= 2``) but was kept whole.
    """
    sep = _LAYOUT_SEP[layout]
    if sep == COMBINATION_SEP:
        parts = [part.strip() for part in label.split(sep)]
        if any(not part for part in parts):
            raise InputError(
                f"perturbation label {label!r} has an empty part: combinations are "
                f"written like 'A{sep}B'"
            )
        return parts, False
    # scPerturb: '_' may be part of a symbol or a guide name; split only into known labels
    parts = [part.strip() for part in label.split(sep)]
    if len(parts) < 2 or (nperts is not None and nperts < 2):
        return [label], False
    if all(part in vocabulary for part in parts):
        return parts, False
    return [label], nperts is not None


def _prepared_label(parts: list[str], control: str, label: str) -> str:
    """Join the parts of a label as a prepared label (control dropped, sorted, ``+``)."""
    kept = sorted({part for part in parts if part != control})
    if not kept:
        return PREPARED_CONTROL
    for part in kept:
        if COMBINATION_SEP in part:
            raise InputError(
                f"label {label!r} has a part {part!r} holding {COMBINATION_SEP!r}, the "
                "combination separator of prepared files; relabel these cells first"
            )
        if part in (PREPARED_CONTROL, UNASSIGNED_LABEL):
            raise InputError(
                f"label {label!r} is (or holds) {part!r}, which prepared files reserve for the "
                f"control or unassigned cells, but the control label is {control!r}; "
                f"pass --control {shlex.quote(part)} if these are the control cells"
            )
    return COMBINATION_SEP.join(kept)


@dataclass
class _Labels:
    """The prepared labels of every cell and what was done to get them."""

    prepared: np.ndarray  # object array of str; "" for unlabelled cells
    unlabelled: np.ndarray  # bool mask
    key: str
    control: str
    sep: str
    original: list[str] = field(default_factory=list)  # changed labels: source ...
    mapped: list[str] = field(default_factory=list)  # ... and prepared
    unsplit: list[str] = field(default_factory=list)  # '_' labels with nperts >= 2 kept whole


def _prepare_labels(
    obs: pd.DataFrame, layout: str, key: str, control_label: str | None, keep_unassigned: bool
) -> _Labels:
    """Map the source labels of every cell to prepared labels."""
    column = obs[key]
    unlabelled = _missing_label_mask(column)
    text = column.astype(object).where(~unlabelled, "").astype(str).str.strip()
    codes, uniques = pd.factorize(text.where(~pd.Series(unlabelled, index=text.index), None))
    codes = np.asarray(codes)
    uniques = [str(u) for u in uniques]
    if not uniques:
        raise InputError(f"column {key!r} has no perturbation labels (all {len(text)} cells are unlabelled)")
    control = resolve_control_label(uniques, control_label)
    vocabulary = set(uniques)
    nperts = _nperts_per_label(obs, codes, len(uniques))
    prepared_uniques = []
    original, mapped, unsplit = [], [], []
    for label, n in zip(uniques, nperts):
        if label == control:
            new = PREPARED_CONTROL
        else:
            parts, kept_whole = _label_parts(label, layout, n, vocabulary)
            if kept_whole:
                unsplit.append(label)
            new = _prepared_label(parts, control, label)
        prepared_uniques.append(new)
        if new != label:
            original.append(label)
            mapped.append(new)
    if keep_unassigned and unlabelled.any():
        if UNASSIGNED_LABEL in uniques:
            raise InputError(
                f"label {UNASSIGNED_LABEL!r} is already used in column {key!r}; "
                "cannot keep the unlabelled cells under it"
            )
        prepared_uniques.append(UNASSIGNED_LABEL)  # code -1 takes the last entry
    else:
        prepared_uniques.append("")
    if unsplit:
        logger.warning(
            "%d label(s) hold '_' and have nperts >= 2 but not every part is a label, so they "
            "were kept whole (relabel them 'A+B' and use --layout generic if they are "
            "combinations): %s", len(unsplit), _preview(sorted(unsplit)),
        )
    prepared = np.asarray(prepared_uniques, dtype=object)[codes]
    return _Labels(prepared, unlabelled, key, control, _LAYOUT_SEP[layout], original, mapped,
                   sorted(unsplit))


# --------------------------------------------------------------------------- counts


def _counts_source(adata: anndata.AnnData, layer: str | None) -> tuple[Any, str]:
    """The (possibly backed) count matrix and its name for messages."""
    if layer is None:
        if adata.X is None:
            raise InputError("the AnnData has no X; pass --layer with the raw counts layer")
        return adata.X, "X"
    if layer not in adata.layers:
        available = ", ".join(map(str, adata.layers.keys())) or "(none)"
        raise InputError(f"layer {layer!r} not found; available layers: {available}")
    return adata.layers[layer], f"layer {layer!r}"


def _integer_csr(block: Any) -> sp.csr_matrix:
    """A checked block of counts as CSR with integer data (int32 when the values fit)."""
    csr = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
    csr.eliminate_zeros()
    data = csr.data
    dtype = np.int32 if data.size == 0 or data.max() <= _INT32_MAX else np.int64
    return sp.csr_matrix((data.astype(dtype), csr.indices, csr.indptr), shape=csr.shape)


def _read_counts(X: Any, keep: np.ndarray, what: str) -> tuple[sp.csr_matrix, str]:
    """Read the rows ``keep`` of a count matrix as an integer CSR matrix, block by block.

    Parameters
    ----------
    X
        A numpy array, a scipy sparse matrix, an h5py dataset (backed dense ``X``) or an
        anndata backed sparse dataset.
    keep
        Boolean mask of the rows to keep.
    what
        The matrix's name in messages.

    Returns
    -------
    tuple
        The CSR matrix and the dtype of the source values.

    Raises
    ------
    InputError
        When the values are not finite, non-negative integers (see
        :func:`~scperturb_vae.data.validate.check_counts`).
    """
    shape = tuple(getattr(X, "shape", ()))
    if len(shape) != 2:
        raise InputError(f"{what} is not a 2-D matrix (shape {shape})")
    n_rows, n_cols = shape
    if n_rows == 0 or n_cols == 0:
        raise InputError(f"{what} is empty ({n_rows} cells x {n_cols} genes)")
    dtype = np.dtype(getattr(X, "dtype", np.float64))
    if dtype.kind not in "iufb":
        raise InputError(f"{what} has dtype {dtype}; expected numeric raw counts")
    fmt = getattr(X, "format", None)
    if fmt is not None and fmt != "csr":  # CSC/COO/...: one sparse conversion, never dense
        X = X.to_memory() if hasattr(X, "to_memory") else X
        X = sp.csr_matrix(X)
    chunk = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    blocks = []
    for start in range(0, n_rows, chunk):
        stop = min(start + chunk, n_rows)
        rows = keep[start:stop]
        if not rows.any():
            continue
        block = X[start:stop]
        block = block.tocsr()[rows] if sp.issparse(block) else np.asarray(block)[rows]
        check_counts(block, what=what)
        blocks.append(_integer_csr(block))
    if not blocks:
        return sp.csr_matrix((0, n_cols), dtype=np.int32), str(dtype)
    counts = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
    counts.sort_indices()
    return counts, str(dtype)


# --------------------------------------------------------------------------- names


def _unique_column_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... when taken."""
    if name not in taken:
        return name
    i = 2
    while f"{name}_{i}" in taken:
        i += 1
    return f"{name}_{i}"


def _make_unique(names: pd.Index) -> tuple[pd.Index, int]:
    """Names made unique by suffixes ``-1``, ``-2``, ... (as anndata does); number changed."""
    from anndata.utils import make_index_unique

    names = pd.Index([str(n) for n in names], dtype=object)
    if names.is_unique:
        return names, 0
    unique = make_index_unique(names)
    return pd.Index(unique, dtype=object), int((np.asarray(unique) != np.asarray(names)).sum())


def _symbol_column(var: pd.DataFrame, layout: str, gene_names: str | None) -> str | None:
    """The ``var`` column of gene symbols to use as gene names, or ``None``."""
    if gene_names is not None:
        if gene_names not in var.columns:
            available = _preview([str(c) for c in var.columns]) or "(none)"
            raise InputError(
                f"gene names column {gene_names!r} is not a var column; available columns: {available}"
            )
        if _is_numeric_column(var[gene_names]):
            raise InputError(f"var column {gene_names!r} is numeric; expected gene symbols")
        return gene_names
    if layout == "replogle" and "gene_name" in var.columns:
        return "gene_name"
    names = pd.Series([str(n) for n in var.index], dtype=object)
    if len(names) and names.str.match(_ENSEMBL_ID).mean() > 0.5:
        for column in SYMBOL_COLUMNS:
            if column in var.columns and not _is_numeric_column(var[column]):
                return column
        logger.info("the gene names are Ensembl IDs and var has no symbol column "
                    "(%s); keeping the IDs", ", ".join(SYMBOL_COLUMNS))
    return None


def _gene_names(var: pd.DataFrame, column: str | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``var`` with unique gene names (symbols from ``column`` when given) and a record."""
    var = var.copy()
    ids = pd.Index([str(n) for n in var.index], dtype=object)
    record: dict[str, Any] = {
        "gene_names_from": column or "var_names",
        "gene_ids_column": "",
        "n_gene_symbols_missing": 0,
        "duplicate_gene_symbols": np.asarray([], dtype=str),
        "n_gene_names_made_unique": 0,
    }
    if column is None:
        names, n_changed = _make_unique(ids)
        record["n_gene_names_made_unique"] = n_changed
    else:
        missing = _missing_label_mask(var[column])
        symbols = var[column].astype(object).where(~missing, "").astype(str).str.strip()
        symbols = pd.Series(np.where(missing, np.asarray(ids), symbols.to_numpy()), dtype=object)
        duplicated = symbols.duplicated(keep=False).to_numpy()
        named = np.where(duplicated, symbols.to_numpy() + "_" + np.asarray(ids), symbols.to_numpy())
        names, n_changed = _make_unique(pd.Index(named, dtype=object))
        id_column = _unique_column_name("gene_id", {str(c) for c in var.columns})
        var[id_column] = np.asarray(ids, dtype=object)
        record.update(
            gene_ids_column=id_column,
            n_gene_symbols_missing=int(missing.sum()),
            duplicate_gene_symbols=np.asarray(sorted(set(symbols[duplicated])), dtype=str),
            n_gene_names_made_unique=n_changed + int(duplicated.sum()),
        )
    var.index = names
    var.index.name = None
    return var, record


def _rename_candidate_columns(obs: pd.DataFrame) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Rename the source columns ``scvae train`` would take for the labels (and ``batch``
    when the GEM group replaces it)."""
    renamed_from, renamed_to = [], []
    taken = {str(c) for c in obs.columns}
    mapping = {}
    names = PERTURBATION_KEY_CANDIDATES + ((BATCH_KEY,) if "gem_group" in obs.columns else ())
    for name in names:
        if name in obs.columns:
            new = _unique_column_name(ORIGINAL_PREFIX + name, taken)
            taken.add(new)
            mapping[name] = new
            renamed_from.append(name)
            renamed_to.append(new)
    return obs.rename(columns=mapping), renamed_from, renamed_to


def _dropped_slots(adata: anndata.AnnData, layer: str | None) -> list[str]:
    """The parts of the source AnnData not carried into the prepared file."""
    dropped = []
    if layer is not None and adata.X is not None:
        dropped.append("X")
    for slot in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
        mapping = getattr(adata, slot, None)
        if mapping is None:
            continue
        for name in mapping:
            if not (slot == "layers" and name == layer):
                dropped.append(f"{slot}/{name}")
    if adata.raw is not None:
        dropped.append("raw")
    return dropped


# --------------------------------------------------------------------------- prepare


def prepare_adata(
    adata: anndata.AnnData,
    *,
    layout: str = "auto",
    perturbation_key: str | None = None,
    control_label: str | None = None,
    gene_names: str | None = None,
    layer: str | None = None,
    keep_unassigned: bool = False,
    source: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
) -> anndata.AnnData:
    """Build the prepared AnnData of a screen, without modifying ``adata``.

    Parameters
    ----------
    adata
        The source AnnData, in memory or backed (``anndata.read_h5ad(path, backed="r")``:
        the counts are then read block by block).
    layout
        ``"auto"``, ``"replogle"``, ``"scperturb"`` or ``"generic"`` (see the module
        documentation).
    perturbation_key
        The ``obs`` column with the source labels [default: ``gene`` (replogle),
        ``perturbation`` (scperturb), the one candidate column present (generic)].
    control_label
        The source label of the control cells [default: the one label spelled like a
        control, see :func:`~scperturb_vae.data.validate.resolve_control_label`].
    gene_names
        The ``var`` column of gene symbols to use as gene names [default: ``gene_name``
        for replogle; otherwise a symbol column when the names are Ensembl IDs].
    layer
        The layer holding the raw counts [default: ``X``]; they are written to ``X``.
    keep_unassigned
        Keep the cells without a label, labelled ``"unassigned"``, instead of dropping them.
    source, sha256
        The source file and its digest, recorded in ``uns["scvae_prepare"]``.

    Returns
    -------
    anndata.AnnData
        The prepared AnnData (in memory), with the record in ``uns["scvae_prepare"]``.
        It is not validated here: :func:`prepare_screen` validates it before writing.

    Raises
    ------
    InputError
        On an unknown or ambiguous layout, a missing or numeric label column, an
        unknown control label, labels that cannot be mapped, counts that are not raw
        counts, or nothing left to train on.
    """
    import anndata

    from scperturb_vae import __version__

    layout, how = _resolve_layout(layout, adata.obs)
    if how != "given":
        logger.info("layout: %s (%s)", layout, how)
    key = _label_column(adata.obs, layout, perturbation_key)
    labels = _prepare_labels(adata.obs, layout, key, control_label, keep_unassigned)
    n_unlabelled = int(labels.unlabelled.sum())
    keep = np.ones(adata.n_obs, dtype=bool) if keep_unassigned else ~labels.unlabelled

    X, what = _counts_source(adata, layer)
    counts, dtype_in = _read_counts(X, keep, what)
    if counts.shape[0] == 0:
        raise InputError(f"no cells left: all {adata.n_obs} cells of column {key!r} are unlabelled")
    cell_rows = np.flatnonzero(keep)
    per_cell = np.asarray(counts.sum(axis=1, dtype=np.int64)).ravel()
    per_gene = np.asarray(counts.sum(axis=0, dtype=np.int64)).ravel()
    nonempty_cells = per_cell > 0
    nonempty_genes = per_gene > 0
    if not nonempty_genes.any() or not nonempty_cells.any():
        raise InputError(f"{what} holds no counts in the {counts.shape[0]} labelled cells")
    if not nonempty_cells.all():
        counts = counts[nonempty_cells]
    if not nonempty_genes.all():
        counts = counts[:, nonempty_genes].tocsr()
    cell_rows = cell_rows[nonempty_cells]
    prepared = labels.prepared[cell_rows]
    if not (prepared == PREPARED_CONTROL).any():
        raise InputError(
            f"no control cells ({labels.control!r}) with counts are left in column {key!r}"
        )

    # obs: the source columns (candidates renamed), the prepared labels, the batch
    obs = adata.obs.iloc[cell_rows].copy()
    obs, renamed_from, renamed_to = _rename_candidate_columns(obs)
    for name in obs.columns:
        if isinstance(obs[name].dtype, pd.CategoricalDtype):
            obs[name] = obs[name].cat.remove_unused_categories()
    obs[PREPARED_KEY] = pd.Categorical(prepared.astype(str))
    batch_from = ""
    if "gem_group" in obs.columns:
        obs[BATCH_KEY] = pd.Categorical(obs["gem_group"].astype(str))
        batch_from = "gem_group"
    elif BATCH_KEY in obs.columns and not obs[BATCH_KEY].isna().any():
        batch_from = BATCH_KEY  # the source's own batch column, kept as it is
    obs_names, n_cells_renamed = _make_unique(obs.index)
    obs.index = obs_names
    obs.index.name = None

    var = adata.var.iloc[np.flatnonzero(nonempty_genes)]
    var, gene_record = _gene_names(var, _symbol_column(adata.var, layout, gene_names))

    record: dict[str, Any] = {
        "source": str(pathlib.Path(source).resolve()) if source is not None else "in-memory AnnData",
        "source_sha256": sha256 or "",
        "source_n_cells": int(adata.n_obs),
        "source_n_genes": int(adata.n_vars),
        "layout": layout,
        "layout_chosen": how,
        "counts_from": what,
        "counts_dtype_in": dtype_in,
        "counts_dtype": str(counts.dtype),
        "perturbation_key_in": key,
        "perturbation_key": PREPARED_KEY,
        "control_label_in": labels.control,
        "control_label": PREPARED_CONTROL,
        "combination_sep_in": labels.sep,
        "combination_sep": COMBINATION_SEP,
        "label_mapping": {
            "original": np.asarray(labels.original, dtype=str),
            "prepared": np.asarray(labels.mapped, dtype=str),
        },
        "unsplit_labels": np.asarray(labels.unsplit, dtype=str),
        "n_cells_unlabelled": n_unlabelled,
        "unlabelled_cells": (
            f"kept as {UNASSIGNED_LABEL!r}" if keep_unassigned else "dropped"
        ),
        "n_cells_dropped_unlabelled": 0 if keep_unassigned else n_unlabelled,
        "n_cells_dropped_empty": int((~nonempty_cells).sum()),
        "n_genes_dropped_empty": int((~nonempty_genes).sum()),
        "renamed_obs_columns": {
            "original": np.asarray(renamed_from, dtype=str),
            "renamed": np.asarray(renamed_to, dtype=str),
        },
        "batch_key": BATCH_KEY if batch_from else "",
        "batch_from": batch_from,
        "n_cell_names_made_unique": n_cells_renamed,
        "dropped_slots": np.asarray(_dropped_slots(adata, layer), dtype=str),
        "n_cells": int(counts.shape[0]),
        "n_genes": int(counts.shape[1]),
        "scperturb_vae_version": __version__,
        **gene_record,
    }
    return anndata.AnnData(X=counts, obs=obs, var=var, uns={UNS_KEY: record})


@dataclass(frozen=True, eq=False)
class PreparedScreen:
    """What :func:`prepare_screen` wrote.

    Attributes
    ----------
    out
        The prepared file.
    source
        The source file (read only).
    record
        The preparation record (``uns["scvae_prepare"]`` of the prepared file).
    data
        The validated prepared data (its AnnData is the one written).
    """

    out: pathlib.Path
    source: pathlib.Path
    record: dict[str, Any] = field(repr=False)
    data: PerturbationData = field(repr=False)

    @property
    def train_command(self) -> str:
        """The ``scvae train`` line to run on the prepared file."""
        words = [
            "scvae", "train", "--adata", str(self.out),
            "--perturbation-key", PREPARED_KEY, "--control", PREPARED_CONTROL,
        ]
        if self.record.get("batch_key"):
            words += ["--batch-key", str(self.record["batch_key"])]
        words += ["--out", f"runs/{self.out.stem}"]
        return " ".join(shlex.quote(w) for w in words)

    def summary(self) -> str:
        """One paragraph describing the prepared file and what was done."""
        r, d = self.record, self.data
        n_combination_labels = sum(COMBINATION_SEP in label for label in d.labels)
        how = r["layout_chosen"]
        layout = f"layout {r['layout']}" + (f", {how}" if how != "given" else "")
        control = repr(r["control_label_in"])
        if r["control_label_in"] != PREPARED_CONTROL:
            control += f" -> {PREPARED_CONTROL!r}"
        combinations = f"{n_combination_labels} combination labels in {d.n_combination_cells} cells"
        if r["combination_sep_in"] != COMBINATION_SEP and n_combination_labels:
            combinations += f" ({r['combination_sep_in']!r}-joined in the input)"
        parts = [
            f"Prepared {self.out} from {self.source} ({layout}):",
            (f"{r['n_cells']} cells x {r['n_genes']} genes, integer counts "
             f"({r['counts_dtype']} CSR, from {r['counts_dtype_in']} {r['counts_from']});"),
            (f"{len(d.perturbations)} perturbations in obs column {PREPARED_KEY!r} "
             f"(from {r['perturbation_key_in']!r}),"),
            f"{d.n_control_cells} control cells (label {control}),",
            f"{combinations};",
            f"{len(r['label_mapping']['original'])} source labels renamed (label_mapping);",
        ]
        if len(r["unsplit_labels"]):
            parts.append(
                f"{len(r['unsplit_labels'])} '_' labels with nperts >= 2 kept whole (unsplit_labels);"
            )
        if r["n_cells_unlabelled"] and r["unlabelled_cells"] != "dropped":
            parts.append(f"{r['n_cells_unlabelled']} cells without a label kept as {UNASSIGNED_LABEL!r};")
        parts.append(
            f"dropped {r['n_cells_dropped_unlabelled']} cells without a label, "
            f"{r['n_cells_dropped_empty']} cells and {r['n_genes_dropped_empty']} genes without counts;"
        )
        if r["gene_ids_column"]:
            parts.append(
                f"gene names from var column {r['gene_names_from']!r} (original names in "
                f"var[{r['gene_ids_column']!r}], {r['n_gene_names_made_unique']} made unique);"
            )
        if r["batch_key"]:
            n_batches = d.adata.obs[BATCH_KEY].nunique()
            parts.append(f"{n_batches} batches in obs column {BATCH_KEY!r} (from {r['batch_from']!r});")
        if len(r["renamed_obs_columns"]["original"]):
            pairs = ", ".join(
                f"{a} -> {b}" for a, b in zip(r["renamed_obs_columns"]["original"],
                                              r["renamed_obs_columns"]["renamed"])
            )
            parts.append(f"obs columns renamed: {pairs};")
        parts.append(f"record in uns[{UNS_KEY!r}].")
        return " ".join(parts)


def _open_backed(path: pathlib.Path) -> anndata.AnnData:
    """Open an ``.h5ad`` file read-only and backed (the counts stay on disk)."""
    import anndata

    try:
        return anndata.read_h5ad(path, backed="r")
    except MemoryError:
        raise
    except Exception as error:
        raise InputError(f"cannot read {path} as h5ad: {_short_reason(error)}") from error


def prepare_screen(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    layout: str = "auto",
    perturbation_key: str | None = None,
    control_label: str | None = None,
    gene_names: str | None = None,
    layer: str | None = None,
    keep_unassigned: bool = False,
    overwrite: bool = False,
    min_cells: int = 20,
) -> PreparedScreen:
    """Prepare a published screen's ``.h5ad`` for ``scvae train`` and write it.

    The source file is opened read-only and backed: its counts are read block by block
    and never densified whole; it is never written.  The prepared AnnData is validated
    with :func:`~scperturb_vae.data.validate.validate_perturbation_adata` (so a prepared file
    always trains) and written atomically.

    Parameters
    ----------
    path
        The source ``.h5ad``.
    out
        The prepared ``.h5ad`` to write.
    layout, perturbation_key, control_label, gene_names, layer, keep_unassigned
        As in :func:`prepare_adata`.
    overwrite
        Replace an existing ``out`` (only once the new file is complete).
    min_cells
        Perturbations with fewer cells are reported by the validation (not removed).

    Returns
    -------
    PreparedScreen
        The output path, the record, the validated data; ``summary()`` and
        ``train_command`` describe them.

    Raises
    ------
    InputError
        When the source cannot be read or prepared (see :func:`prepare_adata`).
    OutputError
        When ``out`` exists (without ``overwrite``), cannot be written, or is the source.
    """
    source = _check_file(path)
    out = check_output(out, overwrite)
    if out.exists() and out.resolve() == source.resolve():
        raise OutputError(f"{out} is the input file; write the prepared file elsewhere")
    sha256 = file_sha256(source)
    adata = _open_backed(source)
    try:
        prepared = prepare_adata(
            adata, layout=layout, perturbation_key=perturbation_key,
            control_label=control_label, gene_names=gene_names, layer=layer,
            keep_unassigned=keep_unassigned, source=source, sha256=sha256,
        )
    finally:
        if getattr(adata, "file", None) is not None and adata.isbacked:
            adata.file.close()
    data = validate_perturbation_adata(
        prepared, perturbation_key=PREPARED_KEY, control_label=PREPARED_CONTROL,
        min_cells=min_cells,
    )
    with atomic_path(out, overwrite=overwrite) as tmp:
        try:
            prepared.write_h5ad(tmp)
        except OSError as error:
            raise OutputError(f"cannot write {out}: {_short_reason(error)}") from error
    return PreparedScreen(out=out, source=source, record=prepared.uns[UNS_KEY], data=data)
