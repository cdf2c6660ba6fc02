"""``scvae prepare`` as a library function: :func:`prepare_screen` reads a published
screen's ``.h5ad`` read-only (backed), prepares it in memory
(:func:`scperturb_vae.data.prepare.prepare_adata`; layouts in
:mod:`scperturb_vae.data.layouts`), validates the result and writes it atomically;
:class:`PreparedScreen` describes what was written.
"""

from __future__ import annotations

import os
import pathlib
import shlex
from dataclasses import dataclass, field
from typing import Any

from scperturb_vae.data.labels import COMBINATION_SEP
from scperturb_vae.data.layouts import PREPARED_CONTROL, PREPARED_KEY, UNASSIGNED_LABEL
from scperturb_vae.data.prepare import BATCH_KEY, UNS_KEY, prepare_adata
from scperturb_vae.data.reading import check_h5ad_file, file_sha256, read_h5ad_checked, short_reason
from scperturb_vae.data.validate import PerturbationData, validate_perturbation_adata
from scperturb_vae.errors import OutputError
from scperturb_vae.io import atomic_path, check_output

__all__ = ["PreparedScreen", "prepare_screen"]


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
        As in :func:`~scperturb_vae.data.prepare.prepare_adata`.
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
        When the source cannot be read or prepared (see
        :func:`~scperturb_vae.data.prepare.prepare_adata`).
    OutputError
        When ``out`` exists (without ``overwrite``), cannot be written, or is the source.
    """
    source = check_h5ad_file(path)
    out = check_output(out, overwrite)
    if out.exists() and out.resolve() == source.resolve():
        raise OutputError(f"{out} is the input file; write the prepared file elsewhere")
    sha256 = file_sha256(source)
    adata = read_h5ad_checked(source, backed=True)
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
            raise OutputError(f"cannot write {out}: {short_reason(error)}") from error
    return PreparedScreen(out=out, source=source, record=prepared.uns[UNS_KEY], data=data)
