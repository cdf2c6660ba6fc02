"""Tests of ``scvae prepare`` (:mod:`scperturb_vae.data.prepare`, :mod:`scperturb_vae.data.layouts`,
:mod:`scperturb_vae.pipelines.prepare`, ``cli/prepare.py``).

Small files in the Replogle 2022 layout (dense float32 counts, Ensembl IDs with a
``gene_name`` column, ``gene``/``gem_group``/``sgID_AB`` obs) and in the scPerturb layout
(``perturbation`` with ``"_"``-joined combinations, ``nperts``, NaN labels) are built in
``tmp_path``, prepared, and checked cell by cell; the printed ``scvae train`` line is run
(1 epoch, 2 latents) on the prepared files.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import SHARED_DATA, assert_user_error, invoke, sha256

from scperturb_vae.data.layouts import PREPARED_CONTROL, detect_layout
from scperturb_vae.data.prepare import UNS_KEY, prepare_adata
from scperturb_vae.data.validate import open_perturbation_adata
from scperturb_vae.errors import InputError, OutputError
from scperturb_vae.pipelines.prepare import prepare_screen

REPLOGLE_GENES = ["POLR2A", "RPL3", "SUPT5H", "MED12", "TAF1", "GATA1"]


# --------------------------------------------------------------------------- helpers


def poisson_counts(rng: np.random.Generator, n_cells: int, n_genes: int) -> np.ndarray:
    X = rng.poisson(2.0, size=(n_cells, n_genes)).astype(np.float32)
    X[:, 0] += 1  # every cell has counts
    return X


def replogle_adata(*, seed: int = 0, storage: str = "dense") -> ad.AnnData:
    """The Replogle 2022 layout: 290 cells x 40 genes, dense float32 raw counts.

    Cell 5 has no counts, gene 7 has no counts; genes 3 and 4 share the symbol TBCE and
    gene 9 has no symbol.
    """
    rng = np.random.default_rng(seed)
    labels = ["non-targeting"] * 50 + [g for g in REPLOGLE_GENES for _ in range(40)]
    n_cells, n_genes = len(labels), 40
    X = poisson_counts(rng, n_cells, n_genes)
    X[5, :] = 0
    X[:, 7] = 0
    ids = [f"ENSG{i:011d}" for i in range(n_genes)]
    symbols = [f"SYM{i}" for i in range(n_genes)]
    symbols[3] = symbols[4] = "TBCE"
    symbols[9] = np.nan
    gene_ids = ["non-targeting" if g == "non-targeting" else f"ENSG9{k:010d}"
                for k, g in enumerate(labels)]
    obs = pd.DataFrame(
        {
            "gene": pd.Categorical(labels),
            "gene_id": pd.Categorical(gene_ids),
            "transcript": pd.Categorical(["P1P2"] * n_cells),
            "gene_transcript": pd.Categorical([f"{g}_P1P2" for g in labels]),
            "sgID_AB": pd.Categorical([f"{g}_guide{i % 2}" for i, g in enumerate(labels)]),
            "mitopercent": rng.uniform(0, 0.1, n_cells).astype(np.float32),
            "UMI_count": X.sum(axis=1),
            "gem_group": np.where(np.arange(n_cells) % 2 == 0, 1, 2).astype(np.int64),
        },
        index=[f"{bc:06d}-{1 + bc % 2}" for bc in range(n_cells)],
    )
    var = pd.DataFrame({"gene_name": pd.Categorical(symbols), "chr": ["chr1"] * n_genes}, index=ids)
    var.index.name = "gene_id"
    matrix = {"dense": X, "csr": sp.csr_matrix(X), "csc": sp.csc_matrix(X)}[storage]
    return ad.AnnData(X=matrix, obs=obs, var=var)


SCPERTURB_LABELS = (
    ["control"] * 50
    + ["A"] * 40 + ["B"] * 40 + ["C"] * 30 + ["D"] * 30
    + ["A_B"] * 30 + ["C_D"] * 20 + ["D_C"] * 10 + ["A_control"] * 10
    + [np.nan] * 20
)
SCPERTURB_NPERTS = (
    [0] * 50 + [1] * 140 + [2] * 70 + [np.nan] * 20
)


def scperturb_adata(*, seed: int = 1) -> ad.AnnData:
    """The scPerturb layout: 280 cells x 30 genes, CSR float32 counts, 20 NaN labels."""
    rng = np.random.default_rng(seed)
    n_cells, n_genes = len(SCPERTURB_LABELS), 30
    X = poisson_counts(rng, n_cells, n_genes)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(SCPERTURB_LABELS),
            "nperts": np.asarray(SCPERTURB_NPERTS, dtype=np.float64),
            "perturbation_type": pd.Categorical(["CRISPR"] * n_cells),
            "celltype": pd.Categorical(["K562"] * n_cells),
        },
        index=[f"cell{i:04d}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"ensembl_id": [f"ENSG{i:011d}" for i in range(n_genes)]},
                       index=[f"GENE{i}" for i in range(n_genes)])
    var.index.name = "gene_symbol"
    return ad.AnnData(X=sp.csr_matrix(X), obs=obs, var=var)


def write(adata: ad.AnnData, path: Path) -> Path:
    adata.write_h5ad(path)
    return path


@pytest.fixture
def replogle_file(tmp_path) -> Path:
    return write(replogle_adata(), tmp_path / "K562_essential_raw_singlecell_01.h5ad")


@pytest.fixture
def scperturb_file(tmp_path) -> Path:
    return write(scperturb_adata(), tmp_path / "NormanWeissman2019_filtered.h5ad")


# --------------------------------------------------------------------------- layouts
def test_detect_layout():
    assert detect_layout(["gene", "gem_group", "sgID_AB", "mitopercent"])[0] == "replogle"
    assert detect_layout(["gene", "sgID_AB"])[0] == "replogle"
    assert detect_layout(["perturbation", "nperts", "celltype"])[0] == "scperturb"
    assert detect_layout(["perturbation", "perturbation_type"])[0] == "scperturb"
    # scPerturb's own Replogle files rename gem_group/sgID_AB (batch/guide_id): scPerturb
    assert detect_layout(["perturbation", "nperts", "gene", "guide_id", "batch"])[0] == "scperturb"
    assert detect_layout(["gene"])[0] == "generic"
    assert detect_layout(["perturbation"])[0] == "generic"
    with pytest.raises(InputError, match="ambiguous layout"):
        detect_layout(["gene", "gem_group", "perturbation", "nperts"])


# --------------------------------------------------------------------------- Replogle
@pytest.mark.parametrize("storage", ["dense", "csr", "csc"])
def test_replogle_layout(tmp_path, storage):
    source = replogle_adata(storage=storage)
    path = write(source, tmp_path / "replogle.h5ad")
    before = sha256(path)
    out = tmp_path / "prepared" / "k562.h5ad"
    result = prepare_screen(path, out)
    assert sha256(path) == before
    assert result.out == out and out.exists()
    prepared = ad.read_h5ad(out)

    # cells: all labelled, cell 5 (no counts) dropped; gene 7 (no counts) dropped
    kept_cells = np.setdiff1d(np.arange(source.n_obs), [5])
    kept_genes = np.setdiff1d(np.arange(source.n_vars), [7])
    assert list(prepared.obs_names) == list(source.obs_names[kept_cells])
    assert sp.issparse(prepared.X) and prepared.X.format == "csr"
    assert prepared.X.dtype == np.int32
    dense = np.asarray(sp.csr_matrix(source.X).todense()) if storage != "dense" else source.X
    np.testing.assert_array_equal(prepared.X.toarray(), dense[np.ix_(kept_cells, kept_genes)].astype(np.int32))

    # labels: non-targeting -> control; genes unchanged; the source column kept as orig_gene
    expected = source.obs["gene"].astype(str).to_numpy()[kept_cells]
    expected = np.where(expected == "non-targeting", PREPARED_CONTROL, expected)
    np.testing.assert_array_equal(prepared.obs["perturbation"].astype(str).to_numpy(), expected)
    assert "gene" not in prepared.obs
    np.testing.assert_array_equal(prepared.obs["orig_gene"].astype(str).to_numpy(),
                                  source.obs["gene"].astype(str).to_numpy()[kept_cells])
    # batch from gem_group
    np.testing.assert_array_equal(prepared.obs["batch"].astype(str).to_numpy(),
                                  source.obs["gem_group"].astype(str).to_numpy()[kept_cells])
    assert "sgID_AB" in prepared.obs and "mitopercent" in prepared.obs

    # genes: symbols; TBCE twice -> TBCE_<id>; no symbol -> the id; ids kept in var['gene_id']
    ids = list(source.var_names[kept_genes])
    assert list(prepared.var["gene_id"]) == ids
    names = list(prepared.var_names)
    assert names[3] == "TBCE_ENSG00000000003" and names[4] == "TBCE_ENSG00000000004"
    assert names[8] == "ENSG00000000009"  # gene 9 (index 8 after dropping gene 7) had no symbol
    assert names[0] == "SYM0" and prepared.var_names.is_unique

    record = prepared.uns[UNS_KEY]
    assert record["layout"] == "replogle" and record["layout_chosen"].startswith("detected")
    assert record["source"] == str(path.resolve())
    assert record["source_sha256"] == before
    assert record["control_label_in"] == "non-targeting"
    assert dict(zip(record["label_mapping"]["original"], record["label_mapping"]["prepared"])) == {
        "non-targeting": "control"}
    assert record["n_cells_dropped_unlabelled"] == 0
    assert record["n_cells_dropped_empty"] == 1 and record["n_genes_dropped_empty"] == 1
    assert record["counts_dtype_in"] == "float32" and record["counts_dtype"] == "int32"
    assert record["gene_names_from"] == "gene_name" and record["n_gene_symbols_missing"] == 1
    assert list(record["duplicate_gene_symbols"]) == ["TBCE"]
    assert record["batch_from"] == "gem_group"
    assert dict(zip(record["renamed_obs_columns"]["original"], record["renamed_obs_columns"]["renamed"])) == {
        "gene": "orig_gene"}

    # the prepared file validates with the train defaults: no flag needed
    data = open_perturbation_adata(out)
    assert data.perturbation_key == "perturbation" and data.control_label == "control"
    assert data.perturbations == sorted(REPLOGLE_GENES)
    assert data.n_control_cells == 49  # cell 5, a control, had no counts


def test_replogle_summary_and_train_line(tmp_path, replogle_file):
    out = tmp_path / "k562.h5ad"
    result = prepare_screen(replogle_file, out)
    summary = result.summary()
    assert "\n" not in summary
    for text in ("289 cells x 39 genes", "6 perturbations", "49 control cells",
                 "'non-targeting' -> 'control'", "dropped 0 cells without a label, 1 cells and 1 genes",
                 "2 batches", "layout replogle"):
        assert text in summary, (text, summary)
    words = shlex.split(result.train_command)
    assert words[:4] == ["scvae", "train", "--adata", str(out)]
    assert words[words.index("--batch-key") + 1] == "batch"
    assert words[words.index("--control") + 1] == "control"


# --------------------------------------------------------------------------- scPerturb
def test_scperturb_layout(tmp_path, scperturb_file):
    source = ad.read_h5ad(scperturb_file)
    before = sha256(scperturb_file)
    out = tmp_path / "norman.h5ad"
    result = prepare_screen(scperturb_file, out)
    assert sha256(scperturb_file) == before
    prepared = ad.read_h5ad(out)

    labelled = source.obs["perturbation"].notna().to_numpy()
    assert prepared.n_obs == int(labelled.sum()) == 260
    assert list(prepared.obs_names) == list(source.obs_names[labelled])
    np.testing.assert_array_equal(prepared.X.toarray(), source.X[labelled].toarray().astype(np.int32))
    assert prepared.X.dtype == np.int32 and prepared.X.format == "csr"
    assert list(prepared.var_names) == list(source.var_names)  # symbols already

    mapping = {"control": "control", "A": "A", "B": "B", "C": "C", "D": "D",
               "A_B": "A+B", "C_D": "C+D", "D_C": "C+D", "A_control": "A"}
    expected = [mapping[label] for label in source.obs["perturbation"][labelled].astype(str)]
    assert list(prepared.obs["perturbation"].astype(str)) == expected
    assert list(prepared.obs["orig_perturbation"].astype(str)) == list(
        source.obs["perturbation"][labelled].astype(str))
    assert "celltype" in prepared.obs and "nperts" in prepared.obs

    record = prepared.uns[UNS_KEY]
    assert record["layout"] == "scperturb" and record["combination_sep_in"] == "_"
    changed = dict(zip(record["label_mapping"]["original"], record["label_mapping"]["prepared"]))
    assert changed == {"A_B": "A+B", "C_D": "C+D", "D_C": "C+D", "A_control": "A"}
    assert record["n_cells_unlabelled"] == 20 and record["n_cells_dropped_unlabelled"] == 20
    assert record["batch_key"] == ""

    data = result.data
    assert data.perturbations == ["A", "B", "C", "D"]
    assert data.n_combination_cells == 60
    summary = result.summary()
    assert "dropped 20 cells without a label" in summary
    assert "2 combination labels in 60 cells" in summary
    assert "--batch-key" not in result.train_command


def test_scperturb_keep_unassigned(tmp_path, scperturb_file):
    out = tmp_path / "norman_all.h5ad"
    result = prepare_screen(scperturb_file, out, keep_unassigned=True)
    prepared = ad.read_h5ad(out)
    assert prepared.n_obs == len(SCPERTURB_LABELS)
    assert (prepared.obs["perturbation"] == "unassigned").sum() == 20
    assert prepared.uns[UNS_KEY]["n_cells_dropped_unlabelled"] == 0
    assert "20 cells without a label kept as 'unassigned'" in result.summary()


def test_scperturb_split_without_nperts_uses_known_labels():
    adata = scperturb_adata()
    del adata.obs["nperts"]
    adata.obs["perturbation"] = adata.obs["perturbation"].cat.add_categories(["GENE_X"])
    adata.obs.loc[adata.obs_names[60:70], "perturbation"] = "GENE_X"  # '_' inside a symbol
    prepared = prepare_adata(adata, layout="scperturb")
    labels = prepared.obs["perturbation"].astype(str)
    assert "GENE_X" in set(labels)  # GENE and X are not labels: not a combination
    assert "A+B" in set(labels) and "C+D" in set(labels)


def test_scperturb_underscore_labels_not_split_without_known_parts(caplog):
    adata = scperturb_adata()
    labels = adata.obs["perturbation"].astype(object).to_numpy()
    labels[50:60] = "A_1"  # a guide name: "1" labels no cell
    labels[60:70] = "E_F"  # nperts 2 (below: set) but E and F label no cell
    labels[70:80] = "B_C"  # known parts but nperts 1: a symbol holding '_', not a pair
    adata.obs["perturbation"] = pd.Categorical(labels)
    nperts = adata.obs["nperts"].to_numpy().copy()
    nperts[50:70] = 2
    nperts[70:80] = 1
    adata.obs["nperts"] = nperts
    with caplog.at_level("WARNING", logger="scperturb_vae"):
        prepared = prepare_adata(adata, layout="scperturb")
    out = prepared.obs["perturbation"].astype(str).to_numpy()
    kept = adata.obs["perturbation"].notna().to_numpy()
    source = adata.obs["perturbation"].astype(str).to_numpy()[kept]
    assert set(out[source == "A_1"]) == {"A_1"}
    assert set(out[source == "E_F"]) == {"E_F"}
    assert set(out[source == "B_C"]) == {"B_C"}
    assert set(out[source == "A_B"]) == {"A+B"}
    assert list(prepared.uns[UNS_KEY]["unsplit_labels"]) == ["A_1", "E_F"]
    assert "kept whole" in caplog.text and "E_F" in caplog.text


def test_generic_layout_and_options(tmp_path):
    adata = scperturb_adata()
    adata.obs = pd.DataFrame(
        {"target_gene": pd.Categorical(["NTC"] * 100 + ["A"] * 90 + ["A+B"] * 90),
         "grp": ["x"] * 280}, index=adata.obs_names)
    adata.var = pd.DataFrame({"symbol": [f"S{i}" for i in range(adata.n_vars)]},
                             index=[f"ENSG{i:011d}" for i in range(adata.n_vars)])
    prepared = prepare_adata(adata)  # auto -> generic; NTC detected as the control
    record = prepared.uns[UNS_KEY]
    assert record["layout"] == "generic" and record["perturbation_key_in"] == "target_gene"
    assert set(prepared.obs["perturbation"].astype(str)) == {"control", "A", "A+B"}
    assert list(prepared.var_names[:2]) == ["S0", "S1"]  # Ensembl IDs -> the symbol column
    assert prepared.var["gene_id"].iloc[0] == "ENSG00000000000"
    kept = prepare_adata(adata, gene_names="symbol")
    assert list(kept.var_names) == list(prepared.var_names)
    with pytest.raises(InputError, match="gene names column 'nope'"):
        prepare_adata(adata, gene_names="nope")
    with pytest.raises(InputError, match="control label 'ctrl' not found"):
        prepare_adata(adata, control_label="ctrl")


def test_counts_layer_is_used(tmp_path):
    adata = scperturb_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    with pytest.raises(InputError, match="non-integer"):
        prepare_adata(adata)
    prepared = prepare_adata(adata, layer="counts")
    assert prepared.X.dtype == np.int32
    record = prepared.uns[UNS_KEY]
    assert record["counts_from"] == "layer 'counts'"
    assert "X" in list(record["dropped_slots"])


def test_input_untouched_in_memory():
    adata = scperturb_adata()
    obs_before = adata.obs.copy()
    X_before = adata.X.copy()
    prepare_adata(adata)
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert (adata.X != X_before).nnz == 0


def test_output_errors(tmp_path, scperturb_file):
    out = tmp_path / "out.h5ad"
    prepare_screen(scperturb_file, out)
    with pytest.raises(OutputError, match="exists already"):
        prepare_screen(scperturb_file, out)
    stamp = sha256(out)
    prepare_screen(scperturb_file, out, overwrite=True, keep_unassigned=True)
    assert sha256(out) != stamp
    with pytest.raises(OutputError, match="is the input file"):
        prepare_screen(scperturb_file, scperturb_file, overwrite=True)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("layout", ["replogle", "scperturb"])
def test_cli_prepare_then_printed_train_line(runner, tmp_path, layout):
    source = replogle_adata() if layout == "replogle" else scperturb_adata()
    path = write(source, tmp_path / f"{layout}.h5ad")
    before = sha256(path)
    out = tmp_path / f"{layout}_prepared.h5ad"
    result = invoke(runner, "prepare", "--adata", path, "--out", out)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert f"layout: {layout}" in result.stderr  # the detected layout is said
    assert f"Prepared {out}" in result.stdout
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("scvae train")]
    assert len(lines) == 1, result.stdout
    words = shlex.split(lines[0])
    assert words[:2] == ["scvae", "train"] and words[words.index("--adata") + 1] == str(out)
    args = words[1:]  # "train", then its options
    args[args.index("--out") + 1] = str(tmp_path / "runs" / layout)
    trained = invoke(runner, *args, "--max-epochs", 1, "--n-latent", 2, "--no-progress", "--ll-cells", 0)
    assert trained.exit_code == 0, (trained.stdout, trained.stderr, trained.exception)
    assert (tmp_path / "runs" / layout / "run.json").exists()
    assert sha256(path) == before


def test_cli_help_lists_prepare(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0 and "prepare" in result.stdout
    result = invoke(runner, "prepare", "--help")
    assert result.exit_code == 0 and "--layout" in result.stdout


def test_cli_unknown_layout(runner, tmp_path, replogle_file):
    result = invoke(runner, "prepare", "--adata", replogle_file, "--out", tmp_path / "o.h5ad",
                    "--layout", "tahoe")
    line = assert_user_error(result, 2)
    assert "unknown layout 'tahoe'" in line and "auto, replogle, scperturb, generic" in line


def test_cli_ambiguous_layout(runner, tmp_path):
    adata = replogle_adata()
    adata.obs["perturbation"] = adata.obs["gene"]
    adata.obs["nperts"] = 1
    path = write(adata, tmp_path / "both.h5ad")
    before = sha256(path)
    result = invoke(runner, "prepare", "--adata", path, "--out", tmp_path / "o.h5ad")
    line = assert_user_error(result, 2)
    assert "ambiguous layout" in line and "--layout" in line
    # and a given layout resolves it
    ok = invoke(runner, "prepare", "--adata", path, "--out", tmp_path / "o.h5ad", "--layout", "replogle")
    assert ok.exit_code == 0, ok.stderr
    assert sha256(path) == before


def test_cli_non_integer_counts(runner, tmp_path):
    adata = replogle_adata()
    adata.X = adata.X / 3.0
    path = write(adata, tmp_path / "normalised.h5ad")
    before = sha256(path)
    out = tmp_path / "o.h5ad"
    line = assert_user_error(invoke(runner, "prepare", "--adata", path, "--out", out), 2)
    assert "non-integer" in line
    assert not out.exists() and sha256(path) == before


def test_cli_negative_counts(runner, tmp_path):
    adata = scperturb_adata()
    adata.X = adata.X.copy()
    adata.X.data[0] = -1
    path = write(adata, tmp_path / "neg.h5ad")
    line = assert_user_error(invoke(runner, "prepare", "--adata", path, "--out", tmp_path / "o.h5ad"), 2)
    assert "negative" in line


def test_cli_missing_perturbation_column(runner, tmp_path):
    adata = scperturb_adata()
    adata.obs = adata.obs.rename(columns={"perturbation": "condition"})
    path = write(adata, tmp_path / "nocol.h5ad")
    line = assert_user_error(
        invoke(runner, "prepare", "--adata", path, "--out", tmp_path / "o.h5ad", "--layout", "scperturb"), 2)
    assert "no column 'perturbation'" in line and "--perturbation-key" in line
    line = assert_user_error(
        invoke(runner, "prepare", "--adata", path, "--out", tmp_path / "o.h5ad", "-p", "nope"), 2)
    assert "'nope' is not an obs column" in line
    line = assert_user_error(invoke(runner, "prepare", "--adata", path, "--out", tmp_path / "o.h5ad"), 2)
    assert "no perturbation column found" in line
    # the right column, given
    ok = invoke(runner, "prepare", "--adata", path, "--out", tmp_path / "o.h5ad", "-p", "condition")
    assert ok.exit_code == 0, ok.stderr


def test_cli_existing_output(runner, tmp_path, scperturb_file):
    out = tmp_path / "o.h5ad"
    out.write_text("keep me")
    line = assert_user_error(invoke(runner, "prepare", "--adata", scperturb_file, "--out", out), 3)
    assert "exists already" in line and "--overwrite" in line
    assert out.read_text() == "keep me"
    ok = invoke(runner, "prepare", "--adata", scperturb_file, "--out", out, "--overwrite")
    assert ok.exit_code == 0, ok.stderr
    assert ad.read_h5ad(out).n_obs == 260


def test_cli_bad_input_file(runner, tmp_path):
    line = assert_user_error(invoke(runner, "prepare", "--adata", tmp_path / "missing.h5ad",
                                    "--out", tmp_path / "o.h5ad"), 2)
    assert "does not exist" in line
    text = tmp_path / "text.h5ad"
    text.write_text("not hdf5")
    line = assert_user_error(invoke(runner, "prepare", "--adata", text, "--out", tmp_path / "o.h5ad"), 2)
    assert "not an HDF5" in line


# --------------------------------------------------------------------------- real data
REAL_DATA = SHARED_DATA / "datlinger2021_scperturb_testdata.h5ad"


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"{REAL_DATA} not found (real test data lives beside the checkout)")
def test_real_scperturb_subset(tmp_path):
    """Datlinger 2021 via scPerturb: obs 'gene' (no 'perturbation'), nperts 2 on single genes."""
    before = sha256(REAL_DATA)
    out = tmp_path / "datlinger.h5ad"
    result = prepare_screen(REAL_DATA, out)
    assert sha256(REAL_DATA) == before
    record = result.record
    assert record["layout"] == "generic" and record["perturbation_key_in"] == "gene"
    source = ad.read_h5ad(REAL_DATA)
    prepared = ad.read_h5ad(out)
    assert prepared.n_obs == source.n_obs - record["n_cells_dropped_empty"]
    assert set(prepared.obs["perturbation"].astype(str)) == set(source.obs["gene"].astype(str))
    assert len(result.data.perturbations) == 20 and result.data.n_control_cells <= 200
    assert prepared.X.dtype == np.int32
    # the same file read as scPerturb ('gene' as labels): nperts 2 does not split single genes
    again = prepare_screen(REAL_DATA, tmp_path / "again.h5ad", layout="scperturb", perturbation_key="gene")
    assert again.data.perturbations == result.data.perturbations
    assert len(again.record["unsplit_labels"]) == 0
