"""``scvae bench`` (scperturb_vae.bench.harness): outputs, the synthetic writer, one-line errors.

One tiny bench (600 cells x 50 genes, SCVI + 2 models, 1 timed epoch, the sparse check on
the same screen) runs once for the module; no assertion is made on timings.
"""

from __future__ import annotations

import json
import math
import os

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import assert_user_error, invoke

from scperturb_vae.bench.constants import BENCH_COLUMNS
from scperturb_vae.bench.synthetic import CONTROL_LABEL, synthetic_screen_adata, write_synthetic_screen
from scperturb_vae.data.validate import open_perturbation_adata, validate_perturbation_adata
from scperturb_vae.errors import InputError, OutputError

TINY = ("--n-cells", 600, "--n-genes", 50, "--n-perturbations", 12, "--epochs", 1, "--models", "svae+,ivae",
        "--is-cells", 40, "--is-samples", 8, "--batch-size", 64)
REQUIRED = ("model", "seconds_per_epoch", "ratio_to_scvi", "peak_rss_mb", "is_cell_samples_per_second",
            "is_ratio_to_scvi", "n_cells", "n_genes", "batch_size")


@pytest.fixture(scope="module")
def bench(runner, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    result = invoke(runner, "bench", "--out", out, *TINY, "--sparse-check", "--sparse-cells", 600,
                    "--sparse-max-steps", 3, "--backed-check", "--backed-cells", 700, "--backed-max-steps", 2,
                    "--thread-check", "--keep-data")
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return out, result


# --------------------------------------------------------------------------- the command
def test_bench_writes_its_files(bench):
    out, result = bench
    for name in ("bench.csv", "bench.json", "bench.md", "data/screen.h5ad"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no work files left
    assert f"wrote {out}/" in result.stdout
    assert "| scvi |" in result.stdout and "Sparse all the way" in result.stdout


def test_bench_csv_rows_and_ratios(bench):
    out, _ = bench
    full = pd.read_csv(out / "bench.csv")
    assert list(full.columns) == list(BENCH_COLUMNS)
    assert set(REQUIRED) <= set(full.columns)
    table = full[full["setting"] == "in memory"]
    assert list(table["model"]) == ["scvi", "svae+", "ivae"]
    assert (table["ratio_to_reference"] == table["ratio_to_scvi"]).all() and (table["reference"] == "scvi").all()
    # the thread check's rows (the default and each explicit count) and the out-of-core check's
    cores = len(os.sched_getaffinity(0))
    threads = full[full["setting"].str.startswith("threads=")]
    assert len(threads) == 1 + cores and threads["setting"].iloc[0].startswith("threads=default (")
    assert threads["ratio_to_reference"].min() == pytest.approx(1.0) or threads["setting"].iloc[
        int(np.argmin(threads["ratio_to_reference"]))].startswith("threads=default")
    assert set(threads["threads"]) <= set(range(1, cores + 1))
    backed = full[full["setting"].isin(["backed", "in memory (backed check)"])].set_index("setting")
    assert backed.loc["in memory (backed check)", "ratio_to_reference"] == pytest.approx(1.0)
    assert (backed["train_cells_per_second"] > 0).all() and (backed["n_cells"] == 700).all()
    for column in ("seconds_per_epoch", "ratio_to_scvi", "cpu_ratio_to_scvi", "is_ratio_to_scvi",
                   "is_cell_samples_per_second", "peak_rss_mb", "train_peak_rss_mb", "first_epoch_seconds"):
        values = table[column].to_numpy(float)
        assert np.all(np.isfinite(values)) and np.all(values > 0), (column, values)
    scvi = table[table["model"] == "scvi"].iloc[0]
    assert scvi["ratio_to_scvi"] == pytest.approx(1.0) and scvi["is_ratio_to_scvi"] == pytest.approx(1.0)
    assert (table["peak_rss_mb"] >= table["train_peak_rss_mb"]).all()
    assert (table["n_cells"] == 600).all() and (table["n_genes"] == 50).all() and (table["batch_size"] == 64).all()
    assert (table["is_cells"] == 40).all() and (table["is_samples"] == 8).all()
    # the same split for every model: same training cells, same steps
    assert table["n_train_cells"].nunique() == 1 and table["steps_per_epoch"].nunique() == 1


def test_bench_json_and_sparse_check(bench):
    out, _ = bench
    info = json.loads((out / "bench.json").read_text())
    assert info["sizes"]["n_cells"] == 600 and info["sizes"]["epochs"] == 1
    # the thread count a user gets, resolved once: every child of the comparison runs with it
    assert 1 <= info["threads"] <= len(os.sched_getaffinity(0))
    assert {r[0]["torch_threads"] for r in info["runs"].values()} == {info["threads"]}
    assert {"cpu_model", "cpus_allowed", "platform"} <= set(info["machine"])
    assert {"torch", "scvi-tools", "anndata"} <= set(info["versions"])
    assert info["import_only"]["peak_rss_mb"] > 0
    for runs in info["runs"].values():
        stages = [s["stage"] for s in runs[0]["stages"]]
        assert stages == ["import", "read", "setup", "train", "importance_sampling"]
        assert len(runs[0]["epoch_seconds"]) == 2  # warm-up + timed
    writer = info["writer"]["speed"]
    assert writer["n_cells"] == 600 and writer["nnz"] > 0 and writer["cells_per_second"] > 0
    sparse = info["sparse_check"]
    assert [s["stage"] for s in sparse["stages"]] == ["import", "read", "validate", "setup_anndata", "model",
                                                     "train", "latent"]
    assert sparse["csr_bytes"] > 0 and sparse["param_bytes"] > 0
    assert math.isfinite(sparse["ratio"]) and sparse["ratio"] > 0
    # at 600 cells the data add next to nothing above the import-only child: finite, not positive
    assert math.isfinite(sparse["ratio_above_imports"])
    assert sparse["latent_shape"] == [600, 10]
    assert sparse["backed"] is False


def test_bench_backed_check(bench):
    """The out-of-core check trains from the file opened backed and reports its stages."""
    out, result = bench
    info = json.loads((out / "bench.json").read_text())
    backed = info["backed_check"]
    assert backed["backed"] is True and backed["n_cells"] == 700 and backed["latent_shape"] == [700, 10]
    assert backed["train_steps"] == 2
    with h5py.File(out / "data" / "backed_screen.h5ad", "r") as f:
        on_disk = sum(f["X"][k].size * f["X"][k].dtype.itemsize for k in ("data", "indices", "indptr"))
    assert backed["csr_bytes"] == on_disk
    assert backed["meets_target"] == (backed["peak_rss_mb"] < backed["target_mb"] == 3072)
    assert "## Out of core" in (out / "bench.md").read_text() and "Out of core" in result.stdout
    # each pass timed backed and in memory, on the same minibatches
    memory = backed["in_memory"]
    assert memory["backed"] is False and memory["train_steps"] == 2
    assert set(backed["passes"]) == {"train_steps", "validation", "batch_norm_recalibration", "latent"}
    for name, p in backed["passes"].items():
        assert p["seconds"] > 0 and p["cells_per_second"] > 0, name
        assert backed["pass_ratios"][name] == pytest.approx(p["seconds"] / memory["passes"][name]["seconds"])
    assert backed["passes"]["train_steps"]["cells"] == 2 * 64 and backed["passes"]["latent"]["cells"] == 700
    assert "training steps:" in result.stdout and "## Threads" in result.stdout


def test_bench_kept_data_is_the_synthetic_screen(bench):
    out, _ = bench
    adata = ad.read_h5ad(out / "data" / "screen.h5ad")
    reference = synthetic_screen_adata(600, 50, 0.1, 12, 0)
    assert (adata.X != reference.X).nnz == 0


# --------------------------------------------------------------------------- the writer
def _assert_same_screen(a, b):
    assert sp.issparse(a.X) and a.X.format == "csr"
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.X.indptr, b.X.indptr)
    np.testing.assert_array_equal(a.X.indices, b.X.indices)
    np.testing.assert_array_equal(a.X.data, b.X.data)
    assert list(a.obs_names) == list(b.obs_names)
    assert list(a.var_names) == list(b.var_names)
    assert list(a.obs["perturbation"].astype(str)) == list(b.obs["perturbation"].astype(str))


def test_writer_round_trips_in_memory_and_backed(tmp_path):
    sizes = {"n_cells": 1300, "n_genes": 40, "density": 0.15, "n_perturbations": 9, "seed": 3}
    reference = synthetic_screen_adata(**sizes)
    info = write_synthetic_screen(tmp_path / "s.h5ad", **sizes, chunk_cells=300)
    assert info["nnz"] == reference.X.nnz
    assert info["csr_bytes"] == reference.X.data.nbytes + reference.X.indices.nbytes + reference.X.indptr.nbytes

    loaded = ad.read_h5ad(tmp_path / "s.h5ad")
    _assert_same_screen(loaded, reference)
    assert loaded.X.dtype == np.float32 and loaded.X.has_sorted_indices
    assert loaded.obs["perturbation"].dtype == "category"

    backed = ad.read_h5ad(tmp_path / "s.h5ad", backed="r")
    try:
        assert backed.shape == reference.shape
        rows = backed.X[100:260]
        assert (sp.csr_matrix(rows) != reference.X[100:260]).nnz == 0
        validate_perturbation_adata(backed)  # read block by block
    finally:
        backed.file.close()

    data = open_perturbation_adata(tmp_path / "s.h5ad")
    assert data.control_label == CONTROL_LABEL and data.perturbation_key == "perturbation"
    assert len(data.perturbations) == 9
    assert data.n_control_cells == 130  # 10% of the cells


def test_writer_output_does_not_depend_on_chunks(tmp_path):
    sizes = {"n_cells": 2500, "n_genes": 30, "density": 0.2, "n_perturbations": 5, "seed": 0}
    write_synthetic_screen(tmp_path / "small.h5ad", **sizes, chunk_cells=7)
    write_synthetic_screen(tmp_path / "large.h5ad", **sizes, chunk_cells=100_000)
    _assert_same_screen(ad.read_h5ad(tmp_path / "small.h5ad"), ad.read_h5ad(tmp_path / "large.h5ad"))
    with h5py.File(tmp_path / "small.h5ad") as f:
        assert f["X"].attrs["encoding-type"] == "csr_matrix"
        assert list(f["X"].attrs["shape"]) == [2500, 30]
        assert f["X/data"].maxshape == (None,)


def test_synthetic_screen_properties():
    adata = synthetic_screen_adata(4000, 60, 0.1, 7, 1)
    X = adata.X
    assert X.has_canonical_format
    assert np.all(np.diff(X.indptr) > 0)  # no empty cell
    assert np.all(np.bincount(X.indices, minlength=60) > 0)  # no empty gene
    assert np.all(X.data >= 1) and np.all(X.data == np.round(X.data))
    # each gene detected with probability density, plus one gene per cell
    assert X.nnz / X.shape[0] == pytest.approx(1 + 0.1 * 59, rel=0.05)
    counts = adata.obs["perturbation"].value_counts()
    assert counts[CONTROL_LABEL] == 400 and counts.drop(CONTROL_LABEL).between(514, 515).all()
    assert (synthetic_screen_adata(4000, 60, 0.1, 7, 2).X != X).nnz > 0  # the seed matters


def test_writer_refuses_bad_sizes_and_existing_files(tmp_path):
    with pytest.raises(InputError, match="at least --n-genes"):
        write_synthetic_screen(tmp_path / "a.h5ad", n_cells=10, n_genes=50, density=0.1, n_perturbations=2, seed=0)
    with pytest.raises(InputError, match="density"):
        write_synthetic_screen(tmp_path / "a.h5ad", n_cells=100, n_genes=5, density=0.0, n_perturbations=2, seed=0)
    assert not (tmp_path / "a.h5ad").exists()
    write_synthetic_screen(tmp_path / "a.h5ad", n_cells=100, n_genes=5, density=0.5, n_perturbations=2, seed=0)
    with pytest.raises(OutputError, match="exists already"):
        write_synthetic_screen(tmp_path / "a.h5ad", n_cells=100, n_genes=5, density=0.5, n_perturbations=2, seed=0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5ad"]  # no temporary file left


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--density", 1.5), "--density must be in (0, 1]"),
        (("--n-cells", 10), "must be at least --n-genes"),
        (("--epochs", 0), "--epochs must be at least 1"),
        (("--models", "svae+,scvi"), "unknown model(s) scvi"),
        (("--threads", 0), "--threads must be at least 1"),
        (("--is-samples", 0), "--is-samples must be at least 1"),
        (("--batch-size", 1), "--batch-size must be at least 2"),
        (("--n-perturbations", 0), "--n-perturbations must be at least 1"),
        (("--no-speed",), "nothing to measure"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(runner, tmp_path, args, message):
    result = invoke(runner, "bench", "--out", tmp_path / "b", *args)
    line = assert_user_error(result, 2)
    assert message in line, line
    assert not (tmp_path / "b").exists()


def test_existing_output_exits_3(runner, tmp_path):
    (tmp_path / "b").mkdir()
    line = assert_user_error(invoke(runner, "bench", "--out", tmp_path / "b"), 3)
    assert "exists already" in line
