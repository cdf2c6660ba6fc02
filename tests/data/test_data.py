"""Tests of :mod:`scperturb_vae.data.validate` (with :mod:`~scperturb_vae.data.labels`,
:mod:`~scperturb_vae.data.counts` and :mod:`~scperturb_vae.data.reading`): opening and validating
perturbation AnnData."""

from __future__ import annotations

import hashlib
import logging
import pathlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import SHARED_DATA

from scperturb_vae.data.counts import check_counts
from scperturb_vae.data.labels import (
    COMBINATION_SEP,
    CONTROL_SPELLINGS,
    PERTURBATION_KEY_CANDIDATES,
    resolve_control_label,
    resolve_perturbation_key,
    split_combination,
)
from scperturb_vae.data.reading import read_h5ad_checked
from scperturb_vae.data.validate import (
    PerturbationData,
    open_perturbation_adata,
    validate_perturbation_adata,
)
from scperturb_vae.errors import InputError, ScvaeError

REAL_DATA = SHARED_DATA / "datlinger2021_scperturb_testdata.h5ad"

# 60 cells: 15 control, 15 A, 15 B, 15 A+B
LABELS = ["control"] * 15 + ["A"] * 15 + ["B"] * 15 + ["A+B"] * 15


def make_adata(
    labels: list[str] | None = None,
    *,
    n_genes: int = 8,
    sparse: bool = True,
    key: str = "perturbation",
    seed: int = 0,
) -> ad.AnnData:
    """A tiny AnnData of Poisson counts with no empty cell or gene."""
    labels = list(LABELS if labels is None else labels)
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(len(labels), n_genes)).astype(np.float32)
    counts[:, 0] += 1  # every cell has counts
    counts[0, :] += 1  # every gene has counts
    obs = pd.DataFrame(
        {key: pd.Categorical(labels), "batch": [f"b{i % 2}" for i in range(len(labels))]},
        index=[f"cell{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    X = sp.csr_matrix(counts) if sparse else counts
    return ad.AnnData(X=X, obs=obs, var=var)


@pytest.fixture
def h5ad_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "good.h5ad"
    make_adata().write_h5ad(path)
    return path


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- constants


def test_constants():
    assert COMBINATION_SEP == "+"
    assert "non-targeting" in CONTROL_SPELLINGS and "control" in CONTROL_SPELLINGS
    assert PERTURBATION_KEY_CANDIDATES[0] == "perturbation"
    assert issubclass(InputError, ScvaeError) and issubclass(InputError, ValueError)


# --------------------------------------------------------------------------- split_combination


def test_split_combination():
    assert split_combination("A+B") == ["A", "B"]
    assert split_combination(" A + B +C ") == ["A", "B", "C"]
    assert split_combination("A") == ["A"]
    assert split_combination("A_B", sep="_") == ["A", "B"]


@pytest.mark.parametrize("label", ["A+", "+B", "A++B", "", "+"])
def test_split_combination_empty_part(label):
    with pytest.raises(InputError, match="empty part"):
        split_combination(label)


# --------------------------------------------------------------------------- good data


@pytest.mark.parametrize("sparse", [True, False])
def test_validate_good(sparse):
    adata = make_adata(sparse=sparse)
    result = validate_perturbation_adata(adata)
    assert isinstance(result, PerturbationData)
    assert result.adata is adata
    assert result.path is None and result.sha256 is None
    assert result.perturbation_key == "perturbation"
    assert result.control_label == "control"
    assert result.layer is None
    assert result.perturbations == ["A", "B"]
    assert result.labels == ["control", "A", "A+B", "B"]
    assert result.n_cells.to_dict() == {"control": 15, "A": 15, "A+B": 15, "B": 15}
    assert result.n_cells_per_perturbation.to_dict() == {"A": 30, "B": 30}
    assert result.n_combination_cells == 15
    assert result.small_perturbations == []
    assert result.min_cells == 20
    text = result.summary()
    assert "60 cells x 8 genes" in text and "2 in column 'perturbation'" in text
    assert "15 control cells" in text


def test_open_good_file(h5ad_file):
    before = sha256_of(h5ad_file)
    result = open_perturbation_adata(h5ad_file)
    assert result.sha256 == before == sha256_of(h5ad_file)
    assert result.path == h5ad_file
    assert result.perturbations == ["A", "B"]
    assert result.n_cells_per_perturbation["A"] == 30
    assert not result.adata.isbacked
    assert str(h5ad_file) in result.summary()


def test_open_accepts_str_path(h5ad_file):
    result = open_perturbation_adata(str(h5ad_file), control_label="control")
    assert result.control_label == "control"


@pytest.mark.parametrize(
    "control", ["non-targeting", "NT", "ctrl", "control", "Non_Targeting", " CONTROL "]
)
def test_control_detection(control):
    labels = [control] * 20 + ["A"] * 20 + ["B"] * 20
    result = validate_perturbation_adata(make_adata(labels))
    assert result.control_label == control
    assert result.labels[0] == control
    assert result.perturbations == ["A", "B"]


def test_layer_used_instead_of_X():
    adata = make_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.X.multiply(0.37))  # normalised-looking X
    with pytest.raises(InputError, match="non-integer"):
        validate_perturbation_adata(adata)
    result = validate_perturbation_adata(adata, layer="counts")
    assert result.layer == "counts"
    assert "layer 'counts'" in result.summary()


def test_integer_dtype_counts():
    adata = make_adata(sparse=False)
    adata.X = adata.X.astype(np.int32)
    assert validate_perturbation_adata(adata).perturbations == ["A", "B"]


def test_explicit_key_and_control():
    adata = make_adata(key="my_col")
    adata.obs["my_col"] = adata.obs["my_col"].astype(str)  # object dtype works too
    result = validate_perturbation_adata(adata, perturbation_key="my_col", control_label="control")
    assert result.perturbation_key == "my_col"


def test_small_perturbation_is_logged_not_an_error(caplog):
    labels = ["control"] * 30 + ["A"] * 25 + ["B"] * 3 + ["A+C"] * 2
    with caplog.at_level(logging.WARNING, logger="scperturb_vae"):
        result = validate_perturbation_adata(make_adata(labels), min_cells=5)
    assert result.small_perturbations == ["B", "C"]
    assert result.n_cells_per_perturbation.to_dict() == {"A": 27, "B": 3, "C": 2}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "fewer than 5 cells" in warnings[0].getMessage()
    assert "B, C" in warnings[0].getMessage()
    assert "small perturbations" in result.summary()


def test_adata_is_not_modified():
    adata = make_adata()
    obs_before = adata.obs.copy()
    dtypes_before = adata.obs.dtypes.copy()
    categories_before = list(adata.obs["perturbation"].cat.categories)
    X_before = adata.X.copy()
    validate_perturbation_adata(adata)
    assert list(adata.obs.columns) == list(obs_before.columns)
    pd.testing.assert_series_equal(adata.obs.dtypes, dtypes_before)
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert list(adata.obs["perturbation"].cat.categories) == categories_before
    assert (adata.X != X_before).nnz == 0
    assert len(adata.uns) == 0 and list(adata.layers.keys()) == []


def test_file_is_not_modified(h5ad_file):
    before = sha256_of(h5ad_file)
    mtime = h5ad_file.stat().st_mtime_ns
    open_perturbation_adata(h5ad_file)
    read_h5ad_checked(h5ad_file)
    assert sha256_of(h5ad_file) == before
    assert h5ad_file.stat().st_mtime_ns == mtime


# --------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.h5ad does not exist"):
        open_perturbation_adata(tmp_path / "nope.h5ad")


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        read_h5ad_checked(tmp_path)


def test_text_file(tmp_path):
    path = tmp_path / "x.h5ad"
    path.write_text("cell,gene\n1,2\n")
    with pytest.raises(InputError, match=r"x\.h5ad is not an HDF5/h5ad file"):
        open_perturbation_adata(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.h5ad"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="not an HDF5"):
        read_h5ad_checked(path)


def test_truncated_file(h5ad_file, tmp_path):
    data = h5ad_file.read_bytes()
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cannot read .*cut\.h5ad as h5ad: ") as info:
        read_h5ad_checked(cut)
    assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore::Warning")
def test_hdf5_without_anndata_layout(tmp_path):
    import h5py

    path = tmp_path / "plain.h5ad"
    with h5py.File(path, "w") as handle:
        handle["something"] = np.arange(3)
    with pytest.raises(InputError, match="as h5ad"):
        open_perturbation_adata(path)


# --------------------------------------------------------------------------- count errors


def _with_value(sparse: bool, value: float) -> ad.AnnData:
    adata = make_adata(sparse=sparse)
    X = adata.X.toarray() if sparse else adata.X.copy()
    X[3, 2] = value
    adata.X = sp.csr_matrix(X) if sparse else X
    return adata


@pytest.mark.parametrize("sparse", [True, False])
def test_negative_values(sparse):
    with pytest.raises(InputError, match=r"X holds negative values \(min -0\.5\).*--layer"):
        validate_perturbation_adata(_with_value(sparse, -0.5))


@pytest.mark.parametrize("sparse", [True, False])
def test_non_integer_values(sparse):
    with pytest.raises(
        InputError,
        match=r"X holds non-integer values \(e\.g\. 0\.37\).*normalised",
    ):
        validate_perturbation_adata(_with_value(sparse, 0.37))


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize(
    "value, word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")]
)
def test_non_finite_values(sparse, value, word):
    with pytest.raises(InputError, match=rf"X holds 1 {word} values"):
        validate_perturbation_adata(_with_value(sparse, value))


@pytest.mark.parametrize(
    "matrix",
    [
        sp.csr_matrix(np.array([[1.0, -2.0]])),
        sp.csc_matrix(np.array([[1.0, -2.0]])),
        sp.coo_matrix(np.array([[1.0, -2.0]])),
        sp.csr_array(np.array([[1.0, -2.0]])),
        np.array([[1, -2]], dtype=np.int64),
    ],
)
def test_check_counts_formats(matrix):
    with pytest.raises(InputError, match="negative"):
        check_counts(matrix)


def test_check_counts_accepts_counts_in_small_chunks():
    X = np.random.default_rng(1).poisson(2.0, size=(101, 7)).astype(np.float64)
    check_counts(X, chunk_rows=10)
    X[100, 6] = 1.5  # in the last, partial chunk
    with pytest.raises(InputError, match=r"layer 'raw' holds non-integer values \(e\.g\. 1\.5\)"):
        check_counts(X, what="layer 'raw'", chunk_rows=10)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_check_counts_empty(shape):
    with pytest.raises(InputError, match="empty"):
        check_counts(sp.csr_matrix(shape))
    with pytest.raises(InputError, match="empty"):
        check_counts(np.zeros(shape))


def test_check_counts_non_numeric():
    with pytest.raises(InputError, match="dtype"):
        check_counts(np.array([["a", "b"]]))


def test_check_counts_large_sparse_without_densifying(monkeypatch):
    rng = np.random.default_rng(0)
    nnz = 40_000  # density 1e-4
    X = sp.csr_matrix(
        (
            rng.integers(1, 10, size=nnz).astype(np.float32),
            (rng.integers(0, 200_000, size=nnz), rng.integers(0, 2_000, size=nnz)),
        ),
        shape=(200_000, 2_000),
    )

    def refuse(*args, **kwargs):
        raise AssertionError("densified")

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)
    check_counts(X)
    X.data[-1] = -3
    with pytest.raises(InputError, match=r"min -3"):
        check_counts(X)


def test_check_counts_backed(h5ad_file):
    backed = ad.read_h5ad(h5ad_file, backed="r")
    try:
        check_counts(backed.X, chunk_rows=7)
        result = validate_perturbation_adata(backed)
        assert result.perturbations == ["A", "B"]
    finally:
        backed.file.close()


# --------------------------------------------------------------------------- structure errors


def test_missing_layer():
    adata = make_adata()
    adata.layers["spliced"] = adata.X.copy()
    with pytest.raises(InputError, match=r"layer 'counts' not found; available layers: spliced"):
        validate_perturbation_adata(adata, layer="counts")


def test_missing_column():
    with pytest.raises(
        InputError,
        match=r"'guide' is not an obs column; available columns: .*batch",
    ):
        validate_perturbation_adata(make_adata(), perturbation_key="guide")


def test_no_candidate_column():
    adata = make_adata(key="my_labels")
    with pytest.raises(InputError, match="no perturbation column found.*--perturbation-key"):
        validate_perturbation_adata(adata)


def test_several_candidate_columns():
    adata = make_adata()
    adata.obs["gene"] = adata.obs["perturbation"].astype(str)
    with pytest.raises(
        InputError,
        match="several obs columns.*perturbation, gene.*--perturbation-key",
    ):
        validate_perturbation_adata(adata)


@pytest.mark.parametrize("values", [np.arange(60), np.arange(60) * 0.5, np.arange(60) % 2 == 0])
def test_numeric_column(values):
    adata = make_adata()
    adata.obs["dose"] = values
    with pytest.raises(InputError, match="column 'dose' is numeric.*perturbation labels"):
        validate_perturbation_adata(adata, perturbation_key="dose")


@pytest.mark.parametrize("missing", [np.nan, None, "", "  "])
def test_missing_labels(missing):
    adata = make_adata()
    labels = adata.obs["perturbation"].astype(object).to_numpy()
    labels[[4, 9]] = missing
    adata.obs["perturbation"] = labels
    with pytest.raises(InputError, match="'perturbation' has 2 cells without a perturbation label"):
        validate_perturbation_adata(adata)


def test_no_control_match():
    adata = make_adata(["A"] * 20 + ["B"] * 20 + ["C"] * 20)
    with pytest.raises(InputError, match="no control cells found.*pass --control"):
        validate_perturbation_adata(adata)


def test_several_control_matches():
    adata = make_adata(["control"] * 20 + ["non-targeting"] * 20 + ["A"] * 20)
    with pytest.raises(
        InputError,
        match="several labels look like controls: control, non-targeting; pass --control",
    ):
        validate_perturbation_adata(adata)
    result = validate_perturbation_adata(adata, control_label="non-targeting")
    assert result.perturbations == ["A", "control"]


def test_explicit_control_case_suggestion():
    adata = make_adata(["Non-Targeting"] * 20 + ["A"] * 20 + ["B"] * 20)
    with pytest.raises(InputError, match="'non-targeting' not found.*did you mean 'Non-Targeting'"):
        validate_perturbation_adata(adata, control_label="non-targeting")


def test_explicit_control_absent():
    with pytest.raises(
        InputError,
        match="'DMSO' not found among the labels; labels include: control, A",
    ):
        validate_perturbation_adata(make_adata(), control_label="DMSO")


def test_only_controls():
    with pytest.raises(InputError, match="only control cells.*at least one perturbation"):
        validate_perturbation_adata(make_adata(["control"] * 60))


def test_duplicate_gene_names():
    adata = make_adata()
    adata.var_names = ["gene0", "gene1", "gene1"] + [f"g{j}" for j in range(5)]
    with pytest.raises(
        InputError,
        match=r"duplicate gene names \(e\.g\. 'gene1'\).*var_names_make_unique",
    ):
        validate_perturbation_adata(adata)


def test_duplicate_cell_names():
    adata = make_adata()
    adata.obs_names = ["same"] * 2 + [f"c{i}" for i in range(58)]
    with pytest.raises(
        InputError,
        match=r"duplicate cell names \(e\.g\. 'same'\).*obs_names_make_unique",
    ):
        validate_perturbation_adata(adata)


@pytest.mark.parametrize("sparse", [True, False])
def test_zero_count_cell(sparse):
    adata = make_adata(sparse=sparse)
    X = adata.X.toarray() if sparse else adata.X.copy()
    X[7] = 0
    adata.X = sp.csr_matrix(X) if sparse else X
    with pytest.raises(
        InputError,
        match=r"1 cells have no counts.*'cell7'.*sc\.pp\.filter_cells\(adata, min_counts=1\)",
    ):
        validate_perturbation_adata(adata)


@pytest.mark.parametrize("sparse", [True, False])
def test_zero_count_gene(sparse):
    adata = make_adata(sparse=sparse)
    X = adata.X.toarray() if sparse else adata.X.copy()
    X[:, 5] = 0
    X[:, 6] = 0
    adata.X = sp.csr_matrix(X) if sparse else X
    with pytest.raises(
        InputError,
        match=r"2 genes have no counts.*sc\.pp\.filter_genes\(adata, min_counts=1\)",
    ):
        validate_perturbation_adata(adata)


def test_control_inside_combination():
    adata = make_adata(["control"] * 20 + ["A"] * 20 + ["control+A"] * 20)
    with pytest.raises(InputError, match="'control\\+A' combines the control 'control'"):
        validate_perturbation_adata(adata)


def test_empty_combination_part():
    adata = make_adata(["control"] * 20 + ["A"] * 20 + ["A+"] * 20)
    with pytest.raises(InputError, match="'A\\+' has an empty part"):
        validate_perturbation_adata(adata)


def test_bad_min_cells():
    with pytest.raises(InputError, match="min_cells"):
        validate_perturbation_adata(make_adata(), min_cells=-1)


# --------------------------------------------------------------------------- resolvers directly


def test_resolve_perturbation_key_direct():
    obs = pd.DataFrame({"target_gene": ["a", "b"], "n": [1, 2]})
    assert resolve_perturbation_key(obs, None) == "target_gene"
    assert resolve_perturbation_key(obs, "target_gene") == "target_gene"
    with pytest.raises(InputError, match="numeric"):
        resolve_perturbation_key(obs, "n")


def test_resolve_control_label_direct():
    assert resolve_control_label(["A", "ctrl", "B", "ctrl"], None) == "ctrl"
    assert resolve_control_label(pd.Series(["x", "NTC"]), None) == "NTC"
    assert resolve_control_label(["x", "DMSO"], "DMSO") == "DMSO"
    # safe-targeting is not auto-detected: the user chooses it
    with pytest.raises(InputError, match="no control cells found"):
        resolve_control_label(["safe-targeting", "A"], None)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"real test data absent: {REAL_DATA}")
def test_real_datlinger_file():
    before = sha256_of(REAL_DATA)
    result = open_perturbation_adata(REAL_DATA, perturbation_key="gene")
    assert result.control_label == "control"
    assert len(result.perturbations) == 20
    assert result.n_combination_cells == 0
    assert result.adata.shape == (7500, 2000)
    assert result.sha256 == before == sha256_of(REAL_DATA)


def test_labels_that_look_like_combinations_are_warned_about(caplog):
    labels = ["control"] * 30 + ["G1"] * 25 + ["G2"] * 25 + ["G1;G2"] * 20 + ["G1_G2"] * 20 + ["MED12_KO"] * 20
    with caplog.at_level(logging.WARNING, logger="scperturb_vae"):
        result = validate_perturbation_adata(make_adata(labels), min_cells=5)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2, messages  # G1;G2 and G1_G2; MED12_KO's parts are not labels
    assert any("'G1;G2'" in m and "'G1+G2'" in m for m in messages)
    assert any("'G1_G2'" in m for m in messages)
    assert "G1;G2" in result.perturbations  # still a single perturbation, as the warning says


def test_guide_level_controls_are_detected():
    labels = ["non-targeting_g1"] * 20 + ["non-targeting_g2"] * 20 + ["A"] * 25
    with pytest.raises(InputError, match="guide-level labels.*non-targeting_g1.*replace"):
        validate_perturbation_adata(make_adata(labels))
    merged = ["non-targeting"] * 40 + ["A"] * 25
    assert validate_perturbation_adata(make_adata(merged)).control_label == "non-targeting"


def test_guide_level_controls_beside_the_control_are_warned_about(caplog):
    labels = ["non-targeting"] * 20 + ["NTC-2"] * 20 + ["A"] * 25
    with caplog.at_level(logging.WARNING, logger="scperturb_vae"):
        result = validate_perturbation_adata(make_adata(labels))
    assert result.control_label == "non-targeting"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("guide-level controls" in m and "NTC-2" in m for m in messages), messages


def _log_normalised_with_counts(tmp_path, raw: bool):
    import scanpy as sc

    adata = make_adata()
    adata.layers["counts"] = adata.X.copy()
    if raw:
        adata.raw = adata.copy()  # counts in adata.raw, as scanpy tutorials keep them
        del adata.layers["counts"]
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    adata = adata[:, 1:].copy()  # X keeps fewer genes than raw (a selection of genes)
    path = tmp_path / "lognorm.h5ad"
    adata.write_h5ad(path)
    return path


def test_log_normalised_x_error_names_the_integer_layer(tmp_path):
    path = _log_normalised_with_counts(tmp_path, raw=False)
    with pytest.raises(InputError, match="non-integer.*'counts' holds integer counts: pass --layer counts"):
        open_perturbation_adata(path)
    assert open_perturbation_adata(path, layer="counts").layer == "counts"


def test_counts_in_adata_raw_are_accepted_as_layer_raw(tmp_path):
    path = _log_normalised_with_counts(tmp_path, raw=True)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="'raw' holds integer counts: pass --layer raw"):
        open_perturbation_adata(path)
    data = open_perturbation_adata(path, layer="raw")
    counts = data.adata.layers["raw"]
    assert counts.shape == data.adata.shape
    expected = make_adata().X[:, 1:].toarray()
    np.testing.assert_array_equal(np.asarray(counts.todense() if sp.issparse(counts) else counts), expected)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the file is only read
