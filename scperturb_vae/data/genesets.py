"""Gene-set files: the package's one reader of GMT files and CORUM complex tables.

- :func:`read_gene_sets` reads one GMT file or CORUM table (the layout is told by its
  first line), :func:`load_gene_sets` several, each a source named by its file's stem;
- :func:`read_groups` reads groups of perturbations: a CORUM table, a GMT file or a
  cluster table;
- :func:`restrict_gene_sets` restricts sets to a model's genes and filters them by size;
- :func:`write_gmt` writes sets as GMT (read back by :func:`read_gene_sets`).

Gene names are matched case-insensitively (``Ccnc`` matches ``CCNC``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scperturb_vae.data.cluster_tables import read_cluster_table
from scperturb_vae.errors import InputError
from scperturb_vae.io import atomic_path

__all__ = [
    "CORUM_GENES_COLUMN",
    "CORUM_NAME_COLUMN",
    "CORUM_ORGANISM_COLUMN",
    "case_map",
    "load_gene_sets",
    "read_gene_sets",
    "read_groups",
    "restrict_gene_sets",
    "write_gmt",
]

logger = logging.getLogger("scperturb_vae")


#: Column of a CORUM complex table (tab-separated) with the complex's name; with
#: :data:`CORUM_GENES_COLUMN` in the header it marks the layout.
CORUM_NAME_COLUMN = "ComplexName"
#: Column of a CORUM table with the subunits' gene symbols, ``;``-separated.
CORUM_GENES_COLUMN = "subunits(Gene name)"
#: Column of a CORUM table with the complex's organism.
CORUM_ORGANISM_COLUMN = "Organism"

#: Gene fields that name no gene (compared lower-cased).
_MISSING_GENE = {"", "none", "nan", "na", "-"}


def _read_text(path: Path, what: str) -> str:
    """The whole text of a file, with one-line errors for a missing or binary file."""
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if b"\x00" in raw[:65536]:
        raise InputError(f"{what} {path} is not a text file (GMT or a CORUM table were expected)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _first_line(text: str) -> str:
    """The first line of ``text`` that is not blank (``""`` when none is)."""
    return next((line for line in text.splitlines() if line.strip()), "")


def _is_corum_header(first_line: str) -> bool:
    """Whether a file's first line is the header of a CORUM complex table."""
    fields = [f.strip() for f in first_line.rstrip("\r\n").split("\t")]
    return CORUM_NAME_COLUMN in fields and CORUM_GENES_COLUMN in fields


def _parse_gmt(text: str, path: Path) -> dict[str, list[str]]:
    """``{name: genes}`` of a GMT text; a name seen twice gets the union of its genes."""
    sets: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t")
        name = fields[0].strip()
        if len(fields) < 2 or not name:
            raise InputError(
                f"{path}:{lineno}: not a GMT line (expected name<TAB>description<TAB>gene1<TAB>...)"
            )
        genes = [g.strip() for g in fields[2:] if g.strip().lower() not in _MISSING_GENE]
        known = sets.setdefault(name, [])
        seen = set(known)
        known.extend(g for g in genes if not (g in seen or seen.add(g)))
    return sets


def _parse_corum(text: str, path: Path, organism: str | None) -> dict[str, list[str]]:
    """``{complex: subunit genes}`` of a CORUM table, for one organism (``None``: all)."""
    reader = csv.DictReader(text.splitlines(), delimiter="\t")
    sets: dict[str, list[str]] = {}
    organisms: set[str] = set()
    n_rows = 0
    for row in reader:
        n_rows += 1
        org = (row.get(CORUM_ORGANISM_COLUMN) or "").strip()
        organisms.add(org)
        if organism is not None and org.lower() != organism.lower():
            continue
        name = (row.get(CORUM_NAME_COLUMN) or "").strip()
        if not name:
            continue
        genes = [g.strip() for g in (row.get(CORUM_GENES_COLUMN) or "").split(";")]
        genes = list(dict.fromkeys(g for g in genes if g.lower() not in _MISSING_GENE))
        if not genes:
            continue
        if name in sets:  # the same complex name with other subunits: keep both apart
            complex_id = (row.get("ComplexID") or "").strip() or str(n_rows)
            name = f"{name} ({complex_id})"
        sets[name] = genes
    if n_rows and not sets and organism is not None:
        found = ", ".join(sorted(o for o in organisms if o)) or "(none)"
        raise InputError(
            f"CORUM table {path} holds no complex of organism {organism!r}; its organisms: {found}"
        )
    return sets


def read_gene_sets(path: str | os.PathLike, *, organism: str | None = "Human") -> dict[str, list[str]]:
    """Read gene sets from a GMT file or a CORUM complex table.

    The layout is told by the first line: a tab-separated header holding the columns
    ``ComplexName`` and ``subunits(Gene name)`` is a CORUM table (one complex per row,
    ``;``-separated subunit symbols, an ``Organism`` column); anything else is read as
    GMT (``name<TAB>description<TAB>gene1<TAB>gene2...``; blank lines and lines starting
    with ``#`` are skipped).

    Parameters
    ----------
    path
        The file (read only).
    organism
        CORUM only: keep the complexes of this organism (compared case-insensitively;
        ``None`` keeps all).  A complex name that appears twice (two CORUM entries) gets
        its ``ComplexID`` appended to the second one.

    Returns
    -------
    dict
        Set name -> gene names (as written, duplicates removed, file order).  A GMT set
        named twice gets the union of its genes.

    Raises
    ------
    InputError
        When the file is missing, a folder, binary, malformed, or holds no gene set.
    """
    path = Path(path).expanduser()
    text = _read_text(path, "gene-set file")
    first = _first_line(text)
    if not first:
        raise InputError(f"gene-set file {path} is empty")
    return _parse_gene_sets(text, first, path, organism)


def _parse_gene_sets(text: str, first: str, path: Path, organism: str | None) -> dict[str, list[str]]:
    """The sets with genes of a GMT or CORUM text (``first``: its first non-blank line)."""
    if _is_corum_header(first):
        sets = _parse_corum(text, path, organism)
    else:
        sets = _parse_gmt(text, path)
    sets = {name: genes for name, genes in sets.items() if genes}
    if not sets:
        raise InputError(f"gene-set file {path} holds no gene set with genes")
    return sets


def load_gene_sets(
    paths: str | os.PathLike | Iterable[str | os.PathLike], *, organism: str | None = "Human"
) -> dict[str, dict[str, list[str]]]:
    """Read several gene-set files (see :func:`read_gene_sets`).

    Returns
    -------
    dict
        Source -> (set name -> genes).  The source is the file's stem
        (``h.all.v7.0.symbols.gmt`` -> ``h.all.v7.0.symbols``); a stem seen twice gets
        ``_2``, ``_3``, ... appended.

    Raises
    ------
    InputError
        When no file is given, or as :func:`read_gene_sets`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no gene-set file given; pass at least one --gene-sets FILE")
    out: dict[str, dict[str, list[str]]] = {}
    for path in paths:
        source = path.stem or path.name
        name, i = source, 1
        while name in out:
            i += 1
            name = f"{source}_{i}"
        out[name] = read_gene_sets(path, organism=organism)
        logger.info(f"read {len(out[name])} gene sets from {path}")
    return out


def read_groups(path: str | os.PathLike, *, organism: str | None = "Human") -> tuple[dict[str, list[str]], dict[str, str], str]:
    """Read perturbation groups: a cluster table, a CORUM complex table or a GMT file.

    A CORUM table (header with ``ComplexName`` and ``subunits(Gene name)``) gives one group
    per complex of ``organism``, its subunit genes being the perturbations (a perturbation
    is the gene it knocks down); a ``.gmt`` file one group per set (as
    :func:`read_gene_sets`); anything else is read as a cluster table by
    :func:`scperturb_vae.data.cluster_tables.read_cluster_table` (long or "members" layout).

    Returns
    -------
    groups, descriptions, kind
        Group -> perturbations; group -> description (cluster tables); ``"corum"``,
        ``"gmt"`` or ``"clusters"``.
    """
    path = Path(path).expanduser()
    text = _read_text(path, "groups file")
    first = _first_line(text)
    if not first:
        raise InputError(f"groups file {path} is empty")
    if _is_corum_header(first):
        return _parse_gene_sets(text, first, path, organism), {}, "corum"
    if path.suffix.lower() == ".gmt":
        return _parse_gene_sets(text, first, path, organism), {}, "gmt"
    table = read_cluster_table(path)
    groups: dict[str, list[str]] = {}
    descriptions: dict[str, str] = {}
    for cluster, sub in table.groupby("cluster", sort=False):
        groups[str(cluster)] = sub["perturbation"].astype(str).tolist()
        desc = next((d for d in sub["description"].astype(str) if d and d != "nan"), "")
        descriptions[str(cluster)] = desc
    return groups, descriptions, "clusters"


def case_map(names: Iterable[str]) -> dict[str, str]:
    """Upper-cased name -> the first name spelled that way."""
    out: dict[str, str] = {}
    for name in names:
        out.setdefault(str(name).upper(), str(name))
    return out


def restrict_gene_sets(
    gene_sets: Mapping[str, Sequence[str]],
    genes: Sequence[str],
    *,
    source: str = "gene sets",
    min_size: int = 1,
    max_size: int | None = None,
) -> tuple[list[str], dict[str, list[str]]]:
    """Restrict gene sets to a model's genes (case-insensitive) and filter them by size.

    Parameters
    ----------
    gene_sets
        Set name -> genes.
    genes
        The model's genes (``adata.var_names``).
    source
        The name of the sets (for messages).
    min_size, max_size
        Keep the sets with ``min_size <= size <= max_size`` genes after restriction.

    Returns
    -------
    universe, sets
        ``universe``: the model's genes that appear in at least one set (before the size
        filter), in the model's order; ``sets``: set name -> its genes in the universe
        (model spelling), for the sets that pass the size filter.

    Raises
    ------
    InputError
        When no gene of any set is among the model's genes (the message gives the
        numbers and an example gene from each side).
    """
    lookup = case_map(genes)
    restricted: dict[str, list[str]] = {}
    in_sets: set[str] = set()
    for name, members in gene_sets.items():
        mapped = list(dict.fromkeys(lookup[g.upper()] for g in members if g.upper() in lookup))
        restricted[name] = mapped
        in_sets.update(mapped)
    if not in_sets:
        set_genes = sorted({g for members in gene_sets.values() for g in members})
        example_set = set_genes[0] if set_genes else "(none)"
        example_model = str(genes[0]) if len(genes) else "(none)"
        raise InputError(
            f"{source}: none of its {len(set_genes)} genes (e.g. {example_set!r}) is among the "
            f"model's {len(genes)} genes (e.g. {example_model!r}); are both gene symbols of the "
            "same species?"
        )
    universe = [str(g) for g in genes if str(g) in in_sets]
    upper = max_size if max_size is not None else np.inf
    kept = {name: m for name, m in restricted.items() if min_size <= len(m) <= upper}
    return universe, kept


def _check_gmt_field(kind: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(f"GMT {kind} must be a string, got {value!r}")
    if value == "" and kind != "description":
        raise InputError(f"GMT {kind} must not be empty")
    if any(c in value for c in "\t\r\n"):
        raise InputError(f"GMT {kind} {value!r} contains a tab or a line break")
    return value


def write_gmt(
    gene_sets: Mapping[str, list[str]],
    path: str | os.PathLike,
    description: str | Mapping[str, str] = "scperturb-vae simulation",
) -> None:
    """Write gene sets as GMT (``name<TAB>description<TAB>gene1<TAB>...``), atomically.

    ``description`` is one string for every set or a mapping name -> string
    (sets missing from it get an empty description).
    """
    if not isinstance(gene_sets, Mapping):
        raise InputError("gene_sets must be a mapping of set name -> list of genes")
    lines = []
    for name, genes in gene_sets.items():
        _check_gmt_field("gene set name", name)
        if isinstance(description, Mapping):
            desc = description.get(name, "")
        else:
            desc = description
        _check_gmt_field("description", desc)
        if isinstance(genes, str):
            raise InputError(f"gene set {name!r} must be a list of genes, not a string")
        fields = [name, desc] + [_check_gmt_field("gene name", str(g)) for g in genes]
        lines.append("\t".join(fields) + "\n")

    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
