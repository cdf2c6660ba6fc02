"""Published layouts of a screen's ``.h5ad``: their detection from the ``obs`` columns,
their label column, and the mapping of their labels to the labels of a prepared file
(:func:`~scperturb_vae.data.prepare.prepare_adata`, ``scvae prepare``).

In a prepared file the control cells are labelled ``"control"``, a single perturbation by
its gene, a combination by its genes sorted and joined with ``"+"`` (``"A+B"``); a part
equal to the control label is dropped from a combination (``"A_control"`` is the single
perturbation ``"A"``); cells without a label are dropped, or labelled ``"unassigned"``.

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
import shlex
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.data.labels import (
    COMBINATION_SEP,
    missing_label_mask,
    preview,
    resolve_control_label,
    resolve_perturbation_key,
    split_combination,
)
from scperturb_vae.errors import InputError

__all__ = [
    "LAYOUTS",
    "PREPARED_CONTROL",
    "PREPARED_KEY",
    "UNASSIGNED_LABEL",
    "PreparedLabels",
    "detect_layout",
    "layout_label_column",
    "prepare_labels",
    "resolve_layout",
]

logger = logging.getLogger("scperturb_vae")

#: Layouts ``scvae prepare`` knows; ``"auto"`` detects one of the others.
LAYOUTS: tuple[str, ...] = ("auto", "replogle", "scperturb", "generic")
#: The ``obs`` column of the labels in a prepared file.
PREPARED_KEY = "perturbation"
#: The label of the control cells in a prepared file.
PREPARED_CONTROL = "control"
#: The label given to cells without one when they are kept (``keep_unassigned``).
UNASSIGNED_LABEL = "unassigned"

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


def resolve_layout(layout: str, obs: pd.DataFrame) -> tuple[str, str]:
    """The layout to use and how it was chosen."""
    if not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    layout = layout.lower()
    if layout == "auto":
        found, reason = detect_layout(obs.columns)
        return found, f"detected from {reason}" if found != "generic" else f"detected ({reason})"
    return layout, "given"


def layout_label_column(obs: pd.DataFrame, layout: str, perturbation_key: str | None) -> str:
    """The ``obs`` column holding the source labels (missing labels allowed)."""
    if perturbation_key is None and layout in _LAYOUT_KEY:
        perturbation_key = _LAYOUT_KEY[layout]
        if perturbation_key not in obs.columns:
            available = preview([str(c) for c in obs.columns]) or "(none)"
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
        return split_combination(label, sep), False
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
class PreparedLabels:
    """The prepared labels of every cell and what was done to get them."""

    prepared: np.ndarray  # object array of str; "" for unlabelled cells
    unlabelled: np.ndarray  # bool mask
    key: str
    control: str
    sep: str
    original: list[str] = field(default_factory=list)  # changed labels: source ...
    mapped: list[str] = field(default_factory=list)  # ... and prepared
    unsplit: list[str] = field(default_factory=list)  # '_' labels with nperts >= 2 kept whole


def prepare_labels(
    obs: pd.DataFrame, layout: str, key: str, control_label: str | None, keep_unassigned: bool
) -> PreparedLabels:
    """Map the source labels of every cell to prepared labels."""
    column = obs[key]
    unlabelled = missing_label_mask(column)
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
            "combinations): %s", len(unsplit), preview(sorted(unsplit)),
        )
    prepared = np.asarray(prepared_uniques, dtype=object)[codes]
    return PreparedLabels(prepared, unlabelled, key, control, _LAYOUT_SEP[layout], original, mapped,
                          sorted(unsplit))
