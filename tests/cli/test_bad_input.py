"""Systematic bad-input suite: every faulty input x every command that reads it.

Each case is run through the ``scvae`` command line (``typer.testing.CliRunner`` on
``scvae_cli.main:app``; a few in a fresh interpreter, to check the real stderr and exit
status, and so that a crash of the process could not take pytest down).  Every case must
give:

- the documented exit code: 2 for bad input or usage, 3 for an output that cannot be
  written;
- exactly one line on stderr starting with ``error:`` (the last one; progress lines may
  precede it), and no traceback on stdout or stderr;
- every input (the h5ad, the cluster table, the gene sets, the run folder) byte-for-byte
  unchanged (SHA-256 before and after);
- nothing under the output's name, and no temporary leftovers beside it.

The faulty files are built from one small valid simulated screen (210 cells x 30 genes,
6 perturbations + control).  Almost every case fails during validation, before any
training; the commands that need a trained run folder (``interpret``, ``score``,
``evaluate --model``) share one tiny model trained once for the module (1 epoch).

Cases that still fail in code this suite does not own are listed in ``KNOWN_FAILURES``
and marked ``xfail(strict=True)``: they must keep failing until fixed, then the mark goes.

``python tests/test_bad_input.py`` prints the table of every case x command with the
exact stderr line and exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import sha256

PERTURBATIONS = [f"P{i:03d}" for i in range(6)]
HELD_OUT = "P005"  # held out by the shared run folder
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# tiny training and evaluation settings (used only by the few cases that get that far)
TRAIN_FAST = ["--max-epochs", "1", "--n-latent", "2", "--ll-cells", "0", "--no-progress"]
EVAL_FAST = ["--models", "vae", "--max-epochs", "1", "--n-latent", "2", "--n-importance", "5",
             "--fewshot", "0", "--adapt-steps", "2", "--heldin-cells", "10", "--no-progress"]
SIM_SMALL = ["--preset", "paper", "--n-latent", "3", "--n-perturbations", "4",
             "--n-cells-per-perturbation", "10", "--n-genes", "20", "--n-heldout", "1"]
BENCH_FAST = ["--quick", "--models", "vae", "--seeds", "0", "--max-epochs", "1", "--ll-cells", "0"]
SPEED_FAST = ["--n-cells", "40", "--n-genes", "10", "--n-perturbations", "2", "--models", "svae+", "--epochs", "1",
              "--warmup-epochs", "0", "--is-cells", "0"]

OUTPUT_NAME = {"simulate": "out.h5ad", "prepare": "out.h5ad", "clusters": "out.csv", "score": "out.json"}


# --------------------------------------------------------------------------- helpers


def fingerprint(paths) -> dict[str, str]:
    """SHA-256 of every file among ``paths`` (folders: every file inside, recursively)."""
    out: dict[str, str] = {}
    for path in map(Path, paths):
        if path.is_file():
            out[str(path)] = sha256(path)
        elif path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file():
                    out[str(child)] = sha256(child)
            out[str(path) + "/"] = ",".join(sorted(str(c.relative_to(path)) for c in path.rglob("*")))
    return out


def tiny_screen() -> ad.AnnData:
    """210 cells x 30 genes: 30 control cells and 30 cells for each of P000..P005."""
    from scperturb_vae.data.simulate import simulate_screen

    return simulate_screen("paper", n_perturbations=6, n_cells_per_perturbation=30, n_latent=4,
                           n_genes=30, n_heldout=1, max_targets=2, seed=0)


def _labels(adata: ad.AnnData) -> np.ndarray:
    return adata.obs["perturbation"].astype(str).to_numpy()


def _flip(path: Path, start: int, width: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(max(0, start), min(len(data), start + width)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- bad h5ad files
def _write(adata: ad.AnnData, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # duplicate names warn on write
        warnings.simplefilter("ignore")
        adata.write_h5ad(path)
    return path


def _with_value(screen: ad.AnnData, value: float) -> ad.AnnData:
    adata = screen.copy()
    X = adata.X.tocsr().astype(np.float32)
    X.data[5] = value
    adata.X = X
    return adata


def _relabel(screen: ad.AnnData, mapping: dict[str, str]) -> ad.AnnData:
    adata = screen.copy()
    adata.obs["perturbation"] = pd.Categorical([mapping.get(v, v) for v in _labels(adata)])
    return adata


def _subset_cells(screen: ad.AnnData, keep_per_label: dict[str, int]) -> ad.AnnData:
    """Keep the first ``n`` cells of each label named (labels not named: all cells)."""
    labels = _labels(screen)
    keep = np.zeros(screen.n_obs, dtype=bool)
    for label in pd.unique(labels):
        rows = np.flatnonzero(labels == label)
        keep[rows[: keep_per_label.get(label, len(rows))]] = True
    adata = screen[keep].copy()
    adata.obs["perturbation"] = pd.Categorical(_labels(adata))
    return adata


def build_h5ad(kind: str, screen: ad.AnnData, folder: Path) -> Path:
    """One faulty .h5ad (or a path that is not one) in ``folder``."""
    path = folder / "bad.h5ad"
    if kind == "missing":
        return folder / "missing.h5ad"
    if kind == "directory":
        path.mkdir()
        (path / "inside.txt").write_text("x")
        return path
    if kind == "text":
        path.write_text("cell,gene,count\nc1,g1,3\n")
        return path
    if kind in ("truncated", "corrupted", "corrupted-header"):
        _write(screen, path)
        if kind == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif kind == "corrupted":  # 1 KiB in the middle (here: the count matrix's indices)
            _flip(path, path.stat().st_size // 2 - 512, 1024)
        else:  # 64 bytes of the object header of obsm['z_true'] (read by every command)
            import h5py

            with h5py.File(path, "r") as f:
                address = h5py.h5o.get_info(f["obsm/z_true"].id).addr
            _flip(path, address, 64)
        return path
    if kind == "negative":
        adata = _with_value(screen, -2.0)
    elif kind == "non-integer":
        adata = _with_value(screen, 2.5)
    elif kind == "nan":
        adata = _with_value(screen, np.nan)
    elif kind == "inf":
        adata = _with_value(screen, np.inf)
    elif kind == "zero-cell":
        adata = screen.copy()
        X = adata.X.tolil()
        X[40, :] = 0
        adata.X = sp.csr_matrix(X)
    elif kind == "zero-gene":
        adata = screen.copy()
        X = adata.X.tolil()
        X[:, 7] = 0
        adata.X = sp.csr_matrix(X)
    elif kind == "no-perturbation-column":
        adata = screen.copy()
        adata.obs = adata.obs.rename(columns={"perturbation": "condition"})
    elif kind == "numeric-perturbation-column":
        adata = screen.copy()
        adata.obs["perturbation"] = adata.obs["perturbation"].cat.codes.astype(np.int64)
    elif kind == "no-control":
        adata = _relabel(screen, {"control": "baseline"})
    elif kind == "duplicate-genes":
        adata = screen.copy()
        names = list(adata.var_names)
        names[1] = names[0]
        adata.var_names = names
    elif kind == "duplicate-cells":
        adata = screen.copy()
        names = list(adata.obs_names)
        names[1] = names[0]
        adata.obs_names = names
    elif kind == "single-perturbation":  # the control and P000 only
        adata = screen[np.isin(_labels(screen), ["control", "P000"])].copy()
        adata.obs["perturbation"] = pd.Categorical(_labels(adata))
    elif kind == "one-cell-perturbation":  # P000 has one cell
        adata = _subset_cells(screen, {"P000": 1})
    elif kind == "too-few-cells":  # 8 cells (3 control, 3 P000, 2 P001): too few to train on
        adata = screen[np.isin(_labels(screen), ["control", "P000", "P001"])].copy()
        adata = _subset_cells(adata, {"control": 3, "P000": 3, "P001": 2})
    else:  # pragma: no cover
        raise AssertionError(kind)
    return _write(adata, path)


# --------------------------------------------------------------------------- other bad files
GMT_SETS = {f"SET{i}": [f"gene{j:03d}" for j in range(6 * i, 6 * i + 6)] for i in range(4)}


def write_gmt(path: Path, sets: dict[str, list[str]]) -> Path:
    path.write_text("".join(f"{name}\tdescription\t" + "\t".join(genes) + "\n" for name, genes in sets.items()))
    return path


# --------------------------------------------------------------------------- the cases
@dataclass
class Call:
    """One command line, the inputs it must leave untouched, and its output's name."""

    argv: list[str]
    out: Path
    inputs: list[Path] = field(default_factory=list)
    expected: int = 2
    #: run in a fresh interpreter (real stderr and exit status; a crash cannot stop pytest)
    subprocess: bool = False


class Context:
    """What a case builds its call from: a scratch folder and the shared valid inputs."""

    def __init__(self, tmp: Path, screen: ad.AnnData, base_file: Path, gmt: Path, run_getter: Callable[[], Path]):
        self.tmp, self.screen, self.base_file, self.gmt = tmp, screen, base_file, gmt
        self._run_getter = run_getter

    @property
    def run(self) -> Path:
        return self._run_getter()

    def out(self, command: str) -> Path:
        return self.tmp / OUTPUT_NAME.get(command, "out")

    def call(self, command: str, *, adata: Path | None = None, extra: list[str] = (), out: Path | None = None,
             run: Path | None = None, gene_sets: Path | None = None, inputs: list[Path] = (),
             expected: int = 2, subprocess: bool = False) -> Call:
        """The default command line of ``command`` with the given (faulty) pieces."""
        out = out if out is not None else self.out(command)
        adata = adata if adata is not None else self.base_file
        extra = [str(e) for e in extra]
        if command == "simulate":
            argv = ["simulate", "--out", out, *SIM_SMALL]
        elif command == "benchmark":
            argv = ["benchmark", "--out", out, *BENCH_FAST]
        elif command == "bench":
            argv = ["bench", "--out", out, *SPEED_FAST]
        elif command == "prepare":
            argv = ["prepare", "--adata", adata, "--out", out]
        elif command == "train":
            argv = ["train", "--adata", adata, "--out", out, *TRAIN_FAST]
        elif command == "clusters":
            argv = ["clusters", "--adata", adata, "--out", out]
        elif command == "evaluate":
            holdout = [] if any(e.startswith("--holdout") or e == "--model" for e in extra) else [
                "--holdout-perturbations", "P001"]
            argv = ["evaluate", "--adata", adata, "--out", out, *EVAL_FAST, *holdout]
        elif command == "evaluate-model":  # reuse the shared run folder
            argv = ["evaluate", "--model", run if run is not None else self.run, "--adata", adata, "--out", out,
                    *EVAL_FAST]
            inputs = [*inputs, run if run is not None else self.run]
        elif command == "interpret":
            run = run if run is not None else self.run
            argv = ["interpret", "--run", run, "--gene-sets", gene_sets if gene_sets is not None else self.gmt,
                    "--adata", adata, "--out", out, "--n-cells", "20"]
            inputs = [*inputs, run]
        elif command == "score":
            run = run if run is not None else self.run
            argv = ["score", "--run", run, "--truth", adata, "--out", out]
            inputs = [*inputs, run]
        elif command == "predict":
            run = run if run is not None else self.run
            perturbation = next(p for p in PERTURBATIONS if p != "control")
            argv = ["predict", "--run", run, "--perturbations", perturbation, "--n-cells", "10", "--out", out]
            inputs = [*inputs, run]
        else:  # pragma: no cover
            raise AssertionError(command)
        inputs = [*inputs, adata, self.gmt] + ([gene_sets] if gene_sets is not None else [])
        return Call([str(a) for a in argv + extra], out, inputs, expected, subprocess)


H5AD_READERS = ("train", "clusters", "evaluate", "interpret")
# prepare reads every h5ad; it drops empty cells and genes and renames duplicate names
# (its job), so only the other faults are errors for it
PREPARE = ("prepare",)
FILE_READERS = H5AD_READERS + ("score",)  # score reads the truth file, not its counts
ALL_COMMANDS = ("simulate", "prepare", "train", "clusters", "evaluate", "interpret", "score", "predict", "benchmark",
                "bench")


def _h5ad_case(kind: str, *, subprocess_for: tuple[str, ...] = ()):
    def build(ctx: Context, command: str) -> Call:
        path = build_h5ad(kind, ctx.screen, ctx.tmp)
        return ctx.call(command, adata=path, subprocess=command in subprocess_for)

    return build


def _control_nomatch(ctx: Context, command: str) -> Call:
    return ctx.call(command, extra=["--control", "nope"])


def _holdout(extra: list[str], kind: str | None = None):
    def build(ctx: Context, command: str) -> Call:
        path = build_h5ad(kind, ctx.screen, ctx.tmp) if kind else None
        return ctx.call(command, adata=path, extra=extra)

    return build


def _empty_cluster(name: str):
    """A members-layout table: cluster1 is empty, cluster2 has no member in the data."""

    def build(ctx: Context, command: str) -> Call:
        table = ctx.tmp / "clusters.csv"
        table.write_text('cluster,members\n0,"P000,P001,P002"\n1,""\n2,"NOTAGENE1,NOTAGENE2"\n'
                         '3,"P003,P004,P005"\n')
        if command == "clusters":  # a table whose clusters are all empty or absent from the data
            table.write_text('cluster,members\n1,""\n2,"NOTAGENE1,NOTAGENE2"\n')
            return ctx.call(command, extra=["--clusters", table], inputs=[table])
        return ctx.call(command, extra=["--holdout", name, "--clusters", table], inputs=[table])

    return build


def _gene_sets_no_overlap(ctx: Context, command: str) -> Call:
    gmt = write_gmt(ctx.tmp / "other.gmt", {"OTHER": ["ACTB", "GAPDH", "MYC", "TP53", "EGFR", "KRAS"]})
    return ctx.call(command, gene_sets=gmt)


def _gene_sets_file(kind: str):
    def build(ctx: Context, command: str) -> Call:
        if kind == "missing":
            path = ctx.tmp / "missing.gmt"
        elif kind == "directory":
            path = ctx.tmp / "sets.gmt"
            path.mkdir()
        else:  # binary: an h5ad given as gene sets
            path = Path(_write(ctx.screen, ctx.tmp / "sets.gmt"))
        return ctx.call(command, gene_sets=path)

    return build


def _run_folder(kind: str):
    def build(ctx: Context, command: str) -> Call:
        if kind == "missing":
            run = ctx.tmp / "no_such_run"
        elif kind == "file":
            run = ctx.tmp / "run.txt"
            run.write_text("not a run folder\n")
        else:  # an empty folder
            run = ctx.tmp / "empty_run"
            run.mkdir()
        return ctx.call(command, run=run)

    return build


def _unwritable(ctx: Context, command: str) -> Call:
    """An output whose folder cannot be written: a read-only folder, or (as root, who
    ignores permissions) a path under a regular file."""
    if IS_ROOT:
        blocker = ctx.tmp / "afile"
        blocker.write_text("a regular file\n")
        out = blocker / OUTPUT_NAME.get(command, "out")
    else:
        locked = ctx.tmp / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / OUTPUT_NAME.get(command, "out")
    return ctx.call(command, out=out, expected=3)


def _predict_unknown(ctx: Context, command: str) -> Call:
    """A target the run never trained on (nor a combination of trained ones)."""
    call = ctx.call(command)
    argv = list(call.argv)
    argv[argv.index("--perturbations") + 1] = "NOT_A_GENE+P000"
    return Call(argv, call.out, call.inputs, call.expected, call.subprocess)


def _too_few_cells(ctx: Context, command: str) -> Call:
    if command == "simulate":
        return ctx.call(command, extra=["--n-cells-per-perturbation", "0"])
    if command == "bench":  # 8 cells: a screen can be made, but no model trained on it
        return ctx.call(command, extra=["--n-cells", "8", "--n-genes", "2", "--n-perturbations", "1"])
    path = build_h5ad("too-few-cells", ctx.screen, ctx.tmp)
    # evaluate: P001's 2 cells split into 1 adaptation and 1 evaluation cell, 6 cells train
    extra = ["--holdout-perturbations", "P001"] if command == "evaluate" else []
    return ctx.call(command, adata=path, extra=extra)


#: case -> (commands, builder).  ``evaluate`` trains on ``--adata`` (the input is read
#: before any training); ``evaluate-model`` reuses the shared run folder with ``--model``.
CASES: dict[str, tuple[tuple[str, ...], Callable[[Context, str], Call]]] = {
    # the file itself
    "missing-file": (PREPARE + FILE_READERS, _h5ad_case("missing")),
    "directory": (PREPARE + FILE_READERS, _h5ad_case("directory")),
    "not-h5ad": (PREPARE + FILE_READERS, _h5ad_case("text")),
    "truncated": (PREPARE + FILE_READERS, _h5ad_case("truncated")),
    "corrupted": (PREPARE + H5AD_READERS, _h5ad_case("corrupted", subprocess_for=("clusters", "prepare"))),
    "corrupted-header": (PREPARE + FILE_READERS, _h5ad_case("corrupted-header", subprocess_for=("score",))),
    # the counts
    "negative": (PREPARE + H5AD_READERS, _h5ad_case("negative")),
    "non-integer": (PREPARE + H5AD_READERS, _h5ad_case("non-integer")),
    "nan": (PREPARE + H5AD_READERS, _h5ad_case("nan")),
    "inf": (PREPARE + H5AD_READERS, _h5ad_case("inf")),
    "zero-cell": (H5AD_READERS, _h5ad_case("zero-cell")),
    "zero-gene": (H5AD_READERS, _h5ad_case("zero-gene")),
    # names and labels
    "duplicate-genes": (H5AD_READERS, _h5ad_case("duplicate-genes")),
    "duplicate-cells": (FILE_READERS, _h5ad_case("duplicate-cells")),
    "no-perturbation-column": (PREPARE + H5AD_READERS, _h5ad_case("no-perturbation-column")),
    "numeric-perturbation-column": (PREPARE + H5AD_READERS, _h5ad_case("numeric-perturbation-column")),
    "no-control": (PREPARE + H5AD_READERS, _h5ad_case("no-control")),
    "control-matches-nothing": (PREPARE + ("train", "clusters", "evaluate"), _control_nomatch),
    # held-out sets
    "single-perturbation": (("train", "evaluate"),
                            _holdout(["--holdout-perturbations", "P000"], "single-perturbation")),
    "one-cell-perturbation": (("train", "evaluate"),
                              _holdout(["--holdout-perturbations", "P000"], "one-cell-perturbation")),
    "holdout-unknown-cluster": (("train", "evaluate"), _holdout(["--holdout", "cluster99", "--n-clusters", "2"])),
    "holdout-cluster-holds-all": (("train", "evaluate"), _holdout(["--holdout", "cluster0", "--n-clusters", "1"])),
    "holdout-all-perturbations": (("train", "evaluate"),
                                  _holdout(["--holdout-perturbations", ",".join(PERTURBATIONS)])),
    "empty-cluster": (("train", "clusters", "evaluate"), _empty_cluster("cluster1")),
    "cluster-without-data-members": (("train", "evaluate"), _empty_cluster("cluster2")),
    # gene sets and run folders
    "gene-sets-no-overlap": (("interpret",), _gene_sets_no_overlap),
    "gene-sets-missing": (("interpret",), _gene_sets_file("missing")),
    "gene-sets-directory": (("interpret",), _gene_sets_file("directory")),
    "gene-sets-binary": (("interpret",), _gene_sets_file("binary")),
    "run-missing": (("interpret", "score", "predict", "evaluate-model"), _run_folder("missing")),
    "run-is-a-file": (("interpret", "score", "predict", "evaluate-model"), _run_folder("file")),
    "run-empty-folder": (("interpret", "score", "predict", "evaluate-model"), _run_folder("empty")),
    "predict-unknown-perturbation": (("predict",), _predict_unknown),
    # outputs and sizes
    "unwritable-output": (ALL_COMMANDS + ("evaluate-model",), _unwritable),
    "too-few-cells": (("simulate", "train", "evaluate", "bench"), _too_few_cells),
}

#: Cases that fail in code this suite may not change (scperturb_vae/run.py, being reworked):
#: documented failures, to be fixed there (strict: they must fail until then).
KNOWN_FAILURES = {
}

PARAMS = [
    pytest.param(case, command, id=f"{case}-{command}",
                 marks=[pytest.mark.xfail(reason=KNOWN_FAILURES[case, command], strict=True)]
                 if (case, command) in KNOWN_FAILURES else [])
    for case, (commands, _) in CASES.items() for command in commands
]
NEEDS_RUN = ("interpret", "score", "predict", "evaluate-model")


# --------------------------------------------------------------------------- running a call
@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


def run_call(call: Call) -> Outcome:
    if call.subprocess:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run([sys.executable, "-m", "scvae_cli.main", *call.argv], capture_output=True,
                              text=True, env=env, timeout=300)
        return Outcome(proc.returncode, proc.stdout, proc.stderr)
    from typer.testing import CliRunner

    from scvae_cli.main import app

    result = CliRunner().invoke(app, call.argv)
    return Outcome(result.exit_code, result.stdout, result.stderr, result.exception)


def error_line(outcome: Outcome) -> str:
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    return errors[-1] if errors else (lines[-1] if lines else "")


def check_outcome(call: Call, outcome: Outcome) -> str:
    """The rules every bad input must follow (see the module docstring); returns the line."""
    assert outcome.exit_code == call.expected, (outcome.exit_code, outcome.stdout, outcome.stderr,
                                                outcome.exception)
    if not call.subprocess:  # ended through sys.exit, not through an escaping exception
        assert isinstance(outcome.exception, SystemExit), repr(outcome.exception)
    assert "Traceback" not in outcome.stderr and "Traceback" not in outcome.stdout, outcome.stderr
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1, outcome.stderr
    assert lines[-1] == errors[0] and lines[-1].startswith("error: "), outcome.stderr
    assert "\n" not in errors[0]
    return errors[0]


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def screen() -> ad.AnnData:
    return tiny_screen()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, screen):
    folder = tmp_path_factory.mktemp("shared")
    base = _write(screen, folder / "screen.h5ad")
    gmt = write_gmt(folder / "sets.gmt", GMT_SETS)
    return base, gmt


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, shared) -> Path:
    """One tiny sVAE+ run (1 epoch, 2 latents) holding out P005, for interpret/score/evaluate."""
    base, _ = shared
    out = tmp_path_factory.mktemp("run") / "run"
    call = Call(["train", "--adata", str(base), "--out", str(out), *TRAIN_FAST,
                 "--holdout-perturbations", HELD_OUT], out)
    outcome = run_call(call)
    assert outcome.exit_code == 0, (outcome.stdout, outcome.stderr, outcome.exception)
    return out


def make_call(case: str, command: str, tmp_path: Path, screen, shared, request) -> Call:
    base, gmt = shared
    ctx = Context(tmp_path, screen, base, gmt, lambda: request.getfixturevalue("trained_run"))
    return CASES[case][1](ctx, command)


# --------------------------------------------------------------------------- the test
@pytest.mark.parametrize("case, command", PARAMS)
def test_bad_input(case, command, tmp_path, screen, shared, request):
    if command in NEEDS_RUN:
        request.getfixturevalue("trained_run")  # trained before the snapshot below
    call = make_call(case, command, tmp_path, screen, shared, request)
    before = fingerprint(call.inputs)
    listing = sorted(p.name for p in call.out.parent.iterdir()) if call.out.parent.is_dir() else None
    try:
        outcome = run_call(call)
    finally:
        for locked in tmp_path.glob("locked"):
            locked.chmod(0o700)  # let pytest clean up
    line = check_outcome(call, outcome)
    assert fingerprint(call.inputs) == before, "an input was modified"
    assert not call.out.exists(), f"{call.out} was left behind"
    if listing is not None:  # nothing created beside the output (no temporary leftovers)
        assert sorted(p.name for p in call.out.parent.iterdir()) == listing
    assert line.startswith("error: ")


@pytest.mark.parametrize("command", ["prepare", "train", "clusters", "evaluate", "evaluate-model", "interpret", "score"])
def test_bad_input_creates_no_output_parent_folders(command, tmp_path, screen, shared, request):
    """A missing input fails before the output's missing parent folders are made."""
    if command in NEEDS_RUN:
        request.getfixturevalue("trained_run")
    base, gmt = shared
    ctx = Context(tmp_path, screen, base, gmt, lambda: request.getfixturevalue("trained_run"))
    out = tmp_path / "new" / "sub" / OUTPUT_NAME.get(command, "out")
    call = ctx.call(command, adata=tmp_path / "missing.h5ad", out=out)
    check_outcome(call, run_call(call))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_missing_required_option_is_a_usage_error(command):
    """Typer's own usage error (its box on stderr) for a missing option: exit 2, no traceback."""
    outcome = run_call(Call([command], Path("unused")))
    assert outcome.exit_code == 2, (outcome.stdout, outcome.stderr)
    assert "Missing option" in outcome.stderr
    assert "Traceback" not in outcome.stderr + outcome.stdout


def test_every_command_has_cases():
    """Every command of ``scvae`` (a new one too) has bad-input cases here."""
    from scvae_cli.main import app

    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    covered = {command.replace("-model", "") for commands, _ in CASES.values() for command in commands}
    assert registered <= covered, sorted(registered - covered)
    assert registered <= set(ALL_COMMANDS)


def test_corrupted_file_really_corrupts_the_counts(screen, tmp_path):
    """The 'corrupted' case flips bytes of the count matrix: reading it as h5ad works, and
    only the structure check stands between it and scipy writing out of bounds."""
    from scperturb_vae.data.counts import check_counts
    from scperturb_vae.errors import InputError

    path = build_h5ad("corrupted", screen, tmp_path)
    adata = ad.read_h5ad(path)
    with pytest.raises(InputError, match="not a valid CSR sparse matrix"):
        check_counts(adata.X)


def _broken(kind: str):
    """A sparse matrix whose arrays were damaged after construction (as a corrupted file gives)."""
    X = sp.csr_matrix(np.arange(1, 13, dtype=np.float32).reshape(4, 3))
    if kind == "csr-index-too-large":
        X.indices[2] = 7
    elif kind == "csr-negative-index":
        X.indices[0] = -1
    elif kind == "csr-decreasing-indptr":
        X.indptr[2] = 1
    elif kind == "csr-indptr-past-end":
        X.indptr[-1] = 20
    elif kind == "csc-index-too-large":
        X = X.tocsc()
        X.indices[1] = 9
    elif kind == "coo-outside":
        X = X.tocoo()
        X.row[0] = 11
    return X


@pytest.mark.parametrize("kind", ["csr-index-too-large", "csr-negative-index", "csr-decreasing-indptr",
                                  "csr-indptr-past-end", "csc-index-too-large", "coo-outside"])
def test_check_counts_refuses_a_broken_sparse_structure(kind):
    from scperturb_vae.data.counts import check_counts
    from scperturb_vae.errors import InputError

    with pytest.raises(InputError, match="not a valid .* sparse matrix"):
        check_counts(_broken(kind))
    check_counts(_broken("intact"))  # the same matrix undamaged is fine


# --------------------------------------------------------------------------- the table
def _table() -> None:  # pragma: no cover - a report, run by hand
    """Print every case x command with its exit code and stderr line (markdown)."""
    import tempfile

    screen_ = tiny_screen()
    root = Path(tempfile.mkdtemp(prefix="bad_input_table_"))
    base = _write(screen_, root / "screen.h5ad")
    gmt = write_gmt(root / "sets.gmt", GMT_SETS)
    run_dir = root / "run"
    outcome = run_call(Call(["train", "--adata", str(base), "--out", str(run_dir), *TRAIN_FAST,
                             "--holdout-perturbations", HELD_OUT], run_dir))
    assert outcome.exit_code == 0, outcome.stderr
    print("| case | command | exit | stderr (error line) | rules |")
    print("|---|---|---:|---|---|")
    for case, (commands, build) in CASES.items():
        for command in commands:
            tmp = root / f"{case}-{command}"
            tmp.mkdir()
            call = build(Context(tmp, screen_, base, gmt, lambda: run_dir), command)
            before = fingerprint(call.inputs)
            outcome = run_call(call)
            for locked in tmp.glob("locked"):
                locked.chmod(0o700)
            try:
                check_outcome(call, outcome)
                assert fingerprint(call.inputs) == before
                assert not call.out.exists()
                ok = "ok"
            except AssertionError:
                ok = "FAIL"
            line = error_line(outcome).replace("|", "\\|")
            print(f"| {case} | {command.replace('-model', ' --model')} | {outcome.exit_code} | `{line}` | {ok} |",
                  flush=True)


if __name__ == "__main__":  # pragma: no cover
    _table()
