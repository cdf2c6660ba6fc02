"""Perturbation labels: combinations (``"A+B"``), control spellings and their detection,
the perturbation column of ``obs``, and the short preview of a list used in messages.

Every mistake a user can fix is raised as :class:`~scperturb_vae.errors.InputError`.
Labels are processed on copies: nothing here modifies an AnnData.

Control detection
-----------------
When no control label is given, the label whose normalised spelling (stripped,
lower-cased, with ``-``, ``_`` and spaces treated alike) is one of
:data:`CONTROL_SPELLINGS` is the control; exactly one label must match.
``"safe-targeting"`` and ``"scrambled"`` are deliberately *not* in the list: some
screens hold them next to non-targeting guides as a separate kind of control, and
choosing between them is the user's call (``--control``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from scperturb_vae.errors import InputError

__all__ = [
    "COMBINATION_SEP",
    "CONTROL_SPELLINGS",
    "OTHER_COMBINATION_SEPS",
    "guide_level_controls",
    "suspect_combinations",
    "MAX_LISTED",
    "PERTURBATION_KEY_CANDIDATES",
    "is_numeric_column",
    "looks_like_control",
    "missing_label_mask",
    "preview",
    "resolve_control_label",
    "resolve_perturbation_key",
    "split_combination",
    "unique_labels",
]

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

#: Items shown by :func:`preview` before ``... (N in all)``.
MAX_LISTED = 10


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


def looks_like_control(label: str) -> bool:
    """Tell whether ``label`` is one of :data:`CONTROL_SPELLINGS`."""
    return _normalise_spelling(label) in _CONTROL_NORMALISED


#: a guide's suffix after a control spelling: ``_g1``, ``-2``, ``_sgRNA3``, `` guide 4``, ``.1``
_GUIDE_SUFFIX = re.compile(r"^(?P<base>.+?)[\s_\-.]*(?:g|sg|sgrna|guide|grna)?[\s_\-.]*\d+$", re.IGNORECASE)

#: separators that look like a combination but are not read as one (only ``+`` is)
OTHER_COMBINATION_SEPS: tuple[str, ...] = (";", "|", "_", ",", "/")


def guide_level_controls(labels: Iterable[str]) -> list[str]:
    """Labels that are a control spelling plus a guide number (``non-targeting_g1``, ``NTC-2``)."""
    out = []
    for label in unique_labels(labels):
        match = _GUIDE_SUFFIX.match(str(label).strip())
        if match and not looks_like_control(label) and looks_like_control(match.group("base")):
            out.append(label)
    return sorted(out)


def suspect_combinations(labels: Iterable[str]) -> list[tuple[str, str, list[str]]]:
    """Labels that split on ``;``, ``|``, ``_``, ``,`` or ``/`` into two or more other labels.

    Only ``A+B`` is read as a combination; ``A;B`` trains as a new single perturbation.
    Returns ``(label, separator, parts)`` for each label all of whose parts are themselves
    labels of the column (``G1_G2`` with ``G1`` and ``G2`` present; not ``MED12_KO``).
    """
    unique = unique_labels(labels)
    present = set(unique)
    out = []
    for label in unique:
        for sep in OTHER_COMBINATION_SEPS:
            parts = [p.strip() for p in str(label).split(sep)]
            if len(parts) > 1 and all(p in present and p != label for p in parts):
                out.append((label, sep, parts))
                break
    return out


def preview(items: Iterable[Any], limit: int = MAX_LISTED) -> str:
    """Join up to ``limit`` items with commas, noting how many were left off."""
    items = [str(item) for item in items]
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items)} in all)"
    return text


def unique_labels(labels: Iterable[str] | pd.Series) -> list[str]:
    """Distinct labels as ``str``, in first-seen order."""
    if isinstance(labels, pd.Series):
        values = labels.astype(str).unique()
    else:
        values = pd.unique(pd.Series([str(v) for v in labels], dtype=object))
    return [str(v) for v in values]


def is_numeric_column(column: pd.Series) -> bool:
    """Tell whether a column holds numbers (or booleans) rather than labels."""
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        categories = dtype.categories
        return len(categories) > 0 and (
            pd.api.types.is_numeric_dtype(categories.dtype)
            or pd.api.types.is_bool_dtype(categories.dtype)
        )
    return pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)


def missing_label_mask(column: pd.Series) -> np.ndarray:
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
                f"available columns: {preview(available) or '(none)'}"
            )
        key = perturbation_key
    else:
        found = [c for c in PERTURBATION_KEY_CANDIDATES if c in obs.columns]
        if not found:
            raise InputError(
                "no perturbation column found: none of "
                f"{', '.join(PERTURBATION_KEY_CANDIDATES)} is an obs column "
                f"(available: {preview(available) or '(none)'}); pass --perturbation-key"
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
    if is_numeric_column(column):
        raise InputError(
            f"column {key!r} is numeric ({column.dtype}); expected perturbation labels "
            "such as gene names"
        )
    n_missing = 0 if allow_missing else int(missing_label_mask(column).sum())
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
    unique = unique_labels(labels)
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
        shown = sorted(unique, key=lambda u: (not looks_like_control(u), u))
        raise InputError(
            f"control label {control_label!r} not found among the labels; "
            f"labels include: {preview(shown)}"
        )
    matches = sorted(u for u in unique if looks_like_control(u))
    guides = guide_level_controls(unique)
    if not matches and guides:
        base = _GUIDE_SUFFIX.match(guides[0].strip()).group("base")
        mapping = ", ".join(f"{g!r}: {base!r}" for g in guides[:2]) + (", ..." if len(guides) > 2 else "")
        raise InputError(
            f"the control cells carry guide-level labels ({preview(guides)}); the model needs one "
            f"control label: merge them first (adata.obs[KEY] = adata.obs[KEY].replace({{{mapping}}})), "
            "or pass --control for one of them"
        )
    if not matches:
        raise InputError(
            "no control cells found: none of the labels looks like a control (tried "
            f"{', '.join(_CONTROL_SHOWN)}, any case); pass --control "
            f"(labels include: {preview(sorted(unique))})"
        )
    if len(matches) > 1:
        raise InputError(
            f"several labels look like controls: {', '.join(matches)}; pass --control"
        )
    return matches[0]

