"""Open and validate a perturbation AnnData (Perturb-seq, CROP-seq, ...).

Every command of the toolkit opens its input through :func:`open_perturbation_adata`
(a path) or :func:`validate_perturbation_adata` (an in-memory :class:`anndata.AnnData`).
Both check, once and with one clear line per problem, what the models need:

- the count matrix (``X`` or a layer) holds finite, non-negative, integer-valued counts;
- cell and gene names are unique; no cell and no gene is empty;
- one ``obs`` column holds perturbation labels (gene names; combinations written
  ``"A+B"``), and one of its labels marks the control cells.

Every mistake a user can fix is raised as :class:`~scperturb_vae.errors.InputError`.
Nothing here modifies the AnnData or writes to the input file: files are opened
read-only and fully read into memory, and labels are processed on copies.

Control detection
-----------------
When no control label is given, the label whose normalised spelling (stripped,
lower-cased, with ``-``, ``_`` and spaces treated alike) is one of
:data:`CONTROL_SPELLINGS` is the control; exactly one label must match.
``"safe-targeting"`` and ``"scrambled"`` are deliberately *not* in the list: some
screens hold them next to non-targeting guides as a separate kind of control, and
choosing between them is the user's call (``--control``).

This module imports neither scvi nor torch, and imports anndata only when a file is
read, so that it loads quickly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scperturb_vae.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "COMBINATION_SEP",
    "CONTROL_SPELLINGS",
    "PERTURBATION_KEY_CANDIDATES",
    "PerturbationData",
    "check_counts",
    "file_sha256",
    "open_perturbation_adata",
    "read_h5ad_checked",
    "resolve_control_label",
    "resolve_perturbation_key",
    "split_combination",
    "validate_perturbation_adata",
]

logger = logging.getLogger("scperturb_vae")

#: Spellings of control labels recognised when no control label is given. They are
#: compared after stripping, lower-casing, and treating ``-``, ``_`` and spaces alike
#: (so ``"Non_Targeting"``, ``"NON-TARGETING"`` and ``"non targeting"`` all match).
CONTROL_SPELLINGS: tuple[str, ...] = (
    "non-targeting",
    "non_targeting",
    "nontargeting",
    "non-targeting control",
    "non-targeting-control",
    "nontargeting control",
    "non-targeting_control",
    "control",
    "ctrl",
    "nt",
    "ntc",
    "negative_control",
    "negative control",
    "neg_ctrl",
    "neg_control",
    "negctrl",
    "unperturbed",
)

#: ``obs`` columns tried, in this order, when no perturbation key is given. Exactly
#: one of them must be present. ``"guide"``-like columns are not tried (guides are
#: finer than the perturbed gene and usually sit next to a gene column), nor
#: ``"condition"`` (often a treatment or time point rather than a perturbation).
PERTURBATION_KEY_CANDIDATES: tuple[str, ...] = (
    "perturbation",
    "perturbation_name",
    "perturbations",
    "gene",
    "target_gene",
    "target",
    "guide_target",
)

#: Separator of the parts of a combination label (``"A+B"``).
COMBINATION_SEP = "+"

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HASH_BLOCK = 1 << 20
_VALUE_BLOCK = 1 << 22  # elements of a sparse ``.data`` checked at once
_MAX_LISTED = 10


# --------------------------------------------------------------------------- labels


def split_combination(label: str, sep: str = COMBINATION_SEP) -> list[str]:
    """Split a perturbation label into its single perturbations.

    Parameters
    ----------
    label
        A label such as ``"A"`` or ``"A+B"``.
    sep
        The combination separator.

    Returns
    -------
    list of str
        The stripped parts, in their order: ``"A + B"`` gives ``["A", "B"]``.

    Raises
    ------
    InputError
        When a part is empty (``"A+"``, ``"+"``, ``""``).
    """
    parts = [part.strip() for part in str(label).split(sep)]
    if any(not part for part in parts):
        raise InputError(
            f"perturbation label {str(label)!r} has an empty part: combinations are "
            f"written like 'A{sep}B'"
        )
    return parts


def _normalise_spelling(label: str) -> str:
    """Return ``label`` stripped, lower-cased, with ``-``/``_``/spaces made alike."""
    return re.sub(r"[\s_\-]+", " ", str(label).strip().lower()).strip()


_CONTROL_NORMALISED = frozenset(_normalise_spelling(s) for s in CONTROL_SPELLINGS)


def _first_spellings(spellings: Iterable[str]) -> tuple[str, ...]:
    """Keep the first spelling of each normalised form (for messages)."""
    seen: dict[str, str] = {}
    for spelling in spellings:
        seen.setdefault(_normalise_spelling(spelling), spelling)
    return tuple(seen.values())


_CONTROL_SHOWN = _first_spellings(CONTROL_SPELLINGS)


def _looks_like_control(label: str) -> bool:
    """Tell whether ``label`` is one of :data:`CONTROL_SPELLINGS`."""
    return _normalise_spelling(label) in _CONTROL_NORMALISED


def _preview(items: Iterable[Any], limit: int = _MAX_LISTED) -> str:
    """Join up to ``limit`` items with commas, noting how many were left off."""
    items = [str(item) for item in items]
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items)} in all)"
    return text


def _unique_labels(labels: Iterable[str] | pd.Series) -> list[str]:
    """Distinct labels as ``str``, in first-seen order."""
    if isinstance(labels, pd.Series):
        values = labels.astype(str).unique()
    else:
        values = pd.unique(pd.Series([str(v) for v in labels], dtype=object))
    return [str(v) for v in values]


def _is_numeric_column(column: pd.Series) -> bool:
    """Tell whether a column holds numbers (or booleans) rather than labels."""
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        return len(categories) > 0 and (
            pd.api.types.is_numeric_dtype(categories.dtype)
            or pd.api.types.is_bool_dtype(categories.dtype)
        )
    return pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)


def _missing_label_mask(column: pd.Series) -> np.ndarray:
    """Boolean mask of missing labels: NaN/None or empty/blank strings."""
    missing = column.isna().to_numpy()
    as_text = column.astype(object).where(~missing, "").astype(str)
    return missing | (as_text.str.strip() == "").to_numpy()


def resolve_perturbation_key(obs: pd.DataFrame, perturbation_key: str | None, *, allow_missing: bool = False) -> str:
    """Find the ``obs`` column that holds the perturbation labels.

    Parameters
    ----------
    obs
        The cell annotations (``adata.obs``).
    perturbation_key
        The column named by the user, or ``None`` to pick the one column of
        :data:`PERTURBATION_KEY_CANDIDATES` present in ``obs``.
    allow_missing
        Accept cells without a label (``scvae prepare`` drops them).

    Returns
    -------
    str
        The column name.

    Raises
    ------
    InputError
        When the column is absent, when no or several candidates are present, when
        the column holds numbers, or when some labels are missing.
    """
    available = [str(c) for c in obs.columns]
    if perturbation_key is not None:
        if perturbation_key not in obs.columns:
            raise InputError(
                f"perturbation key {perturbation_key!r} is not an obs column; "
                f"available columns: {_preview(available) or '(none)'}"
            )
        key = perturbation_key
    else:
        found = [c for c in PERTURBATION_KEY_CANDIDATES if c in obs.columns]
        if not found:
            raise InputError(
                "no perturbation column found: none of "
                f"{', '.join(PERTURBATION_KEY_CANDIDATES)} is an obs column "
                f"(available: {_preview(available) or '(none)'}); pass --perturbation-key"
            )
        if len(found) > 1:
            raise InputError(
                f"several obs columns could hold the perturbations: {', '.join(found)}; "
                "pass --perturbation-key"
            )
        key = found[0]
    column = obs[key]
    if isinstance(column, pd.DataFrame):
        raise InputError(f"obs has several columns named {key!r}; rename them first")
    if _is_numeric_column(column):
        raise InputError(
            f"column {key!r} is numeric ({column.dtype}); expected perturbation labels "
            "such as gene names"
        )
    n_missing = 0 if allow_missing else int(_missing_label_mask(column).sum())
    if n_missing:
        raise InputError(
            f"column {key!r} has {n_missing} cells without a perturbation label "
            "(NaN, None or empty); label or remove them first"
        )
    return str(key)


def resolve_control_label(
    labels: Iterable[str] | pd.Series, control_label: str | None
) -> str:
    """Find the label of the control cells.

    Parameters
    ----------
    labels
        The perturbation labels (of all cells, or the distinct ones).
    control_label
        The label given by the user, or ``None`` to detect the one label spelled
        like a control (see :data:`CONTROL_SPELLINGS`).

    Returns
    -------
    str
        The control label, exactly as it appears in ``labels``.

    Raises
    ------
    InputError
        When the given label is absent, or when no or several labels look like a
        control.
    """
    unique = _unique_labels(labels)
    if control_label is not None:
        if control_label in unique:
            return control_label
        wanted = str(control_label).strip().casefold()
        close = [u for u in unique if u.strip().casefold() == wanted]
        if close:
            raise InputError(
                f"control label {control_label!r} not found among the labels; "
                f"did you mean {close[0]!r}? (labels are case-sensitive)"
            )
        shown = sorted(unique, key=lambda u: (not _looks_like_control(u), u))
        raise InputError(
            f"control label {control_label!r} not found among the labels; "
            f"labels include: {_preview(shown)}"
        )
    matches = sorted(u for u in unique if _looks_like_control(u))
    if not matches:
        raise InputError(
            "no control cells found: none of the labels looks like a control (tried "
            f"{', '.join(_CONTROL_SHOWN)}, any case); pass --control "
            f"(labels include: {_preview(sorted(unique))})"
        )
    if len(matches) > 1:
        raise InputError(
            f"several labels look like controls: {', '.join(matches)}; pass --control"
        )
    return matches[0]


# --------------------------------------------------------------------------- counts


def _row_chunks(X: Any, chunk_rows: int) -> Iterator[Any]:
    """Yield ``X[i:j]`` for consecutive blocks of ``chunk_rows`` rows."""
    n_rows = X.shape[0]
    for start in range(0, n_rows, chunk_rows):
        yield X[start : min(start + chunk_rows, n_rows)]


def _value_blocks(X: Any, chunk_rows: int) -> Iterator[np.ndarray]:
    """Yield the stored values of ``X`` in blocks, never densifying sparse data.

    In-memory sparse matrices give their ``.data`` in 1-D blocks; dense arrays and
    backed datasets (h5py datasets, anndata backed sparse datasets) are read in row
    blocks of ``chunk_rows`` rows.
    """
    if sp.issparse(X):
        data = np.asarray(X.data)
        for start in range(0, data.size, _VALUE_BLOCK):
            yield data[start : start + _VALUE_BLOCK]
        return
    for block in _row_chunks(X, chunk_rows):
        if sp.issparse(block):
            yield np.asarray(block.data)
        else:
            yield np.asarray(block)


class _ValueStats:
    """Running summary of the values of a matrix, filled block by block."""

    def __init__(self) -> None:
        self.n_nan = 0
        self.n_inf = 0
        self.n_negative = 0
        self.minimum: float | None = None
        self.non_integer: float | None = None

    def update(self, block: np.ndarray) -> None:
        """Add one block of values to the summary."""
        block = np.ravel(block)
        if block.size == 0:
            return
        if block.dtype.kind in "iub":
            values = block
        else:
            finite = np.isfinite(block)
            if not finite.all():
                n_nan = int(np.isnan(block).sum())
                self.n_nan += n_nan
                self.n_inf += int((~finite).sum()) - n_nan
                values = block[finite]
            else:
                values = block
            if values.size and self.non_integer is None:
                fractional = values != np.rint(values)
                if fractional.any():
                    self.non_integer = float(values[np.argmax(fractional)])
        if values.size == 0:
            return
        low = values.min()
        if low < 0:
            self.n_negative += int((values < 0).sum())
        self.minimum = float(low) if self.minimum is None else min(self.minimum, float(low))


def check_counts(X: Any, *, what: str = "X", chunk_rows: int = 10_000) -> None:
    """Check that a matrix holds raw counts.

    Parameters
    ----------
    X
        A scipy sparse matrix or array (CSR, CSC, COO, ...), a dense numpy array, or
        a backed dataset (h5py dataset, anndata backed sparse dataset).
    what
        How to name the matrix in messages (``"X"``, ``"layer 'counts'"``).
    chunk_rows
        Rows read at once for dense or backed matrices. Sparse matrices are checked
        through their stored values only and are never densified.

    Raises
    ------
    InputError
        When the matrix is empty, is not numeric, or holds NaN, infinite, negative
        or non-integer values.
    """
    shape = tuple(getattr(X, "shape", ()))
    if len(shape) != 2:
        raise InputError(f"{what} is not a 2-D matrix (shape {shape})")
    if shape[0] == 0 or shape[1] == 0:
        raise InputError(f"{what} is empty ({shape[0]} cells x {shape[1]} genes)")
    dtype = np.dtype(getattr(X, "dtype", np.float64))
    if dtype.kind not in "iufb":
        raise InputError(f"{what} has dtype {dtype}; expected numeric raw counts")
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
    _check_sparse_structure(X, what)
    stats = _ValueStats()
    for block in _value_blocks(X, chunk_rows):
        stats.update(block)
    _raise_for_stats(stats, what)


def _check_sparse_structure(X: Any, what: str) -> None:
    """Raise when an in-memory sparse matrix has an impossible structure.

    anndata builds CSR/CSC matrices from a file's ``data``, ``indices`` and ``indptr``
    without checking that the indices lie within the shape; summing such a matrix
    (a corrupted file) makes scipy write outside its arrays and crash the process.
    The checks only read the arrays (nothing is converted or sorted).
    """
    if not sp.issparse(X):
        return
    fmt = X.format
    problem = None
    if fmt in ("csr", "csc"):
        n_major, n_minor = X.shape if fmt == "csr" else X.shape[::-1]
        indptr, indices, data = np.asarray(X.indptr), np.asarray(X.indices), np.asarray(X.data)
        if indptr.ndim != 1 or len(indptr) != n_major + 1:
            problem = f"index pointer of length {len(indptr)} for {n_major} {'rows' if fmt == 'csr' else 'columns'}"
        elif indices.ndim != 1 or data.ndim != 1 or len(indices) != len(data):
            problem = f"{len(indices)} indices for {len(data)} values"
        elif indptr[0] != 0 or indptr[-1] > len(indices):
            problem = f"index pointer runs from {indptr[0]} to {indptr[-1]} for {len(indices)} values"
        elif np.any(np.diff(indptr) < 0):
            problem = "decreasing index pointer"
        elif len(indices) and (indices.min() < 0 or indices.max() >= n_minor):
            problem = f"indices outside 0..{n_minor - 1}"
    elif fmt == "coo":
        row, col = np.asarray(X.row), np.asarray(X.col)
        if len(row) and (row.min() < 0 or row.max() >= X.shape[0] or col.min() < 0 or col.max() >= X.shape[1]):
            problem = "coordinates outside the shape"
    if problem is not None:
        raise InputError(f"{what} is not a valid {fmt.upper()} sparse matrix ({problem}); is the file corrupted?")


def _raise_for_stats(stats: _ValueStats, what: str) -> None:
    """Raise the first problem found in ``stats``, worst first."""
    if stats.n_nan or stats.n_inf:
        found = [f"{n} {kind}" for n, kind in ((stats.n_nan, "NaN"), (stats.n_inf, "infinite"))
                 if n]
        raise InputError(
            f"{what} holds {' and '.join(found)} values: expected finite raw counts"
        )
    if stats.n_negative:
        raise InputError(
            f"{what} holds negative values (min {stats.minimum:g}): expected raw "
            "counts; pass --layer with the raw counts layer"
        )
    if stats.non_integer is not None:
        raise InputError(
            f"{what} holds non-integer values (e.g. {stats.non_integer:.6g}): expected "
            "raw counts, not normalised/log data; pass --layer with the raw counts layer"
        )


def _cell_and_gene_totals(X: Any, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum a matrix over genes (per cell) and over cells (per gene), in float64.

    Sparse matrices are summed directly; dense and backed ones in row blocks.
    """
    if sp.issparse(X):
        per_cell = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
        per_gene = np.asarray(X.sum(axis=0, dtype=np.float64)).ravel()
        return per_cell, per_gene
    per_cell_blocks = []
    per_gene = np.zeros(X.shape[1], dtype=np.float64)
    for block in _row_chunks(X, chunk_rows):
        if sp.issparse(block):
            per_cell_blocks.append(np.asarray(block.sum(axis=1, dtype=np.float64)).ravel())
            per_gene += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
        else:
            block = np.asarray(block)
            per_cell_blocks.append(block.sum(axis=1, dtype=np.float64))
            per_gene += block.sum(axis=0, dtype=np.float64)
    return np.concatenate(per_cell_blocks), per_gene


def _check_unique_names(names: pd.Index, kind: str, fix: str) -> None:
    """Raise when ``names`` (cell or gene names) hold duplicates."""
    if names.is_unique:
        return
    duplicated = names[names.duplicated()]
    raise InputError(
        f"{len(duplicated)} duplicate {kind} names (e.g. {str(duplicated[0])!r}); "
        f"make them unique first (adata.{fix}())"
    )


def _check_no_empty_cells_or_genes(
    X: Any, obs_names: pd.Index, var_names: pd.Index, what: str, chunk_rows: int,
    allow_empty_genes: bool = False,
) -> None:
    """Raise when a cell or a gene has no counts at all."""
    per_cell, per_gene = _cell_and_gene_totals(X, chunk_rows)
    empty_cells = np.flatnonzero(per_cell == 0)
    if empty_cells.size:
        raise InputError(
            f"{empty_cells.size} cells have no counts in {what} (e.g. "
            f"{str(obs_names[empty_cells[0]])!r}); remove them first "
            "(e.g. sc.pp.filter_cells(adata, min_counts=1))"
        )
    empty_genes = np.flatnonzero(per_gene == 0)
    if empty_genes.size and not allow_empty_genes:
        raise InputError(
            f"{empty_genes.size} genes have no counts in {what} (e.g. "
            f"{str(var_names[empty_genes[0]])!r}); remove them first "
            "(e.g. sc.pp.filter_genes(adata, min_counts=1))"
        )


# --------------------------------------------------------------------------- files


def _has_hdf5_signature(path: pathlib.Path) -> bool:
    """Tell whether the file starts with the HDF5 signature.

    The signature may also sit at a user-block offset (512, 1024, 2048, ... bytes).
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        offset = 0
        while offset + len(_HDF5_SIGNATURE) <= size:
            handle.seek(offset)
            if handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def _short_reason(error: BaseException, limit: int = 200) -> str:
    """One short line describing ``error``."""
    text = str(error).strip().splitlines()
    reason = text[0].strip() if text else ""
    if len(reason) > limit:
        reason = reason[: limit - 3] + "..."
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def _check_file(path: str | os.PathLike[str]) -> pathlib.Path:
    """Check that ``path`` is an existing, readable HDF5 file and return it."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an .h5ad file")
    try:
        is_hdf5 = _has_hdf5_signature(path)
    except OSError as error:
        raise InputError(f"cannot open {path}: {_short_reason(error)}") from error
    if not is_hdf5:
        raise InputError(f"{path} is not an HDF5/h5ad file (no HDF5 signature)")
    return path


def read_h5ad_checked(path: str | os.PathLike[str], *, backed: bool = False) -> anndata.AnnData:
    """Read an ``.h5ad`` file fully into memory (or open it backed), read-only.

    Parameters
    ----------
    path
        The file to read.
    backed
        Open the file read-only in backed mode: ``obs``, ``var`` and ``obsm`` are read,
        the count matrix stays on disk and is read in blocks (out of core).

    Returns
    -------
    anndata.AnnData
        The in-memory AnnData (the file is closed on return), or the backed one.

    Raises
    ------
    InputError
        When the path does not exist, is a directory, is not an HDF5 file, or
        cannot be read as h5ad (truncated or corrupted).
    """
    path = _check_file(path)
    import anndata  # deferred: importing anndata takes a while

    try:
        return anndata.read_h5ad(path, backed="r") if backed else anndata.read_h5ad(path)
    except MemoryError:
        raise
    except Exception as error:
        raise InputError(f"cannot read {path} as h5ad: {_short_reason(error)}") from error


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


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
                f"{_preview(self.small_perturbations)}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def _counts_matrix(adata: anndata.AnnData, layer: str | None) -> tuple[Any, str]:
    """Return the count matrix (``X`` or a layer) and its name for messages."""
    if layer is None:
        if adata.X is None:
            raise InputError("the AnnData has no X; pass --layer with the raw counts layer")
        return adata.X, "X"
    if layer not in adata.layers:
        available = ", ".join(map(str, adata.layers.keys())) or "(none)"
        raise InputError(f"layer {layer!r} not found; available layers: {available}")
    return adata.layers[layer], f"layer {layer!r}"


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


def _warn_small(small: list[str], min_cells: int) -> None:
    """Log one warning line naming the perturbations with few cells."""
    if small:
        logger.warning(
            "%d perturbation(s) have fewer than %d cells: %s",
            len(small), min_cells, _preview(small),
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
    X, what = _counts_matrix(adata, layer)
    check_counts(X, what=what)
    _check_unique_names(adata.obs_names, "cell", "obs_names_make_unique")
    _check_unique_names(adata.var_names, "gene", "var_names_make_unique")
    _check_no_empty_cells_or_genes(X, adata.obs_names, adata.var_names, what, 10_000, allow_empty_genes)

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
