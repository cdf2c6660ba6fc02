"""Safe model loading (no unpickling), interrupted runs and ``scvae train --resume``.

- A saved model is ``weights.pt`` (tensors, read with ``weights_only=True``) and
  ``model.json``; a pickle that would run code is refused, and so are folders of another
  class, a newer format, an older pickled format, other genes and misfitting weights.
- A training process killed mid-run leaves nothing under the final name; ``--resume``
  continues from its last checkpoint and the run completes with every epoch's history.
- Ctrl-C exits 130 with one line naming the kept checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scvi
import torch
from typer.testing import CliRunner

import scperturb_vae as sv
from scperturb_vae.data.simulate import simulate_screen
from scperturb_vae.errors import InputError
from scperturb_vae.model.runs import load_run
from scperturb_vae.pipelines.train import TrainSettings, _prepare_checkpoints, _safe_checkpoint, checkpoint_dir
from scvae_cli.main import app

SCVAE = [sys.executable, "-c", "from scvae_cli.main import main; main()"]


def _sim(n_cells: int = 60, n_perturbations: int = 4, n_genes: int = 20, seed: int = 0) -> ad.AnnData:
    return simulate_screen(
        preset="paper", n_perturbations=n_perturbations, n_cells_per_perturbation=n_cells,
        n_control_cells=n_cells, n_genes=n_genes, n_latent=3, n_heldout=0, seed=seed,
    )


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained sVAE+ saved to a folder, with the AnnData it was trained on."""
    path = tmp_path_factory.mktemp("saved")
    adata = _sim()
    scvi.settings.seed = 0
    sv.SVAEPlus.setup_anndata(adata)
    model = sv.SVAEPlus(adata, n_latent=3, beta_k=20.0)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    model.save(path / "model")
    return path / "model", model


# --------------------------------------------------------------------------- the format
def test_saved_folder_holds_tensors_and_json_only(saved):
    folder, model = saved
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "weights.pt"]
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert set(state) == set(model.module.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = json.loads((folder / "model.json").read_text())
    assert meta["format"] == "scperturb-vae-model" and meta["model_class"] == "SVAEPlus"
    assert meta["var_names"] == list(model.adata.var_names)
    assert meta["init_params"]["non_kwargs"]["beta_k"] == 20.0
    assert len(meta["history"]["elbo_train"]["values"]) == 3


def test_round_trip_reproduces_model_outputs(saved):
    folder, model = saved
    loaded = sv.SVAEPlus.load(folder, adata=_sim())
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6)
    np.testing.assert_allclose(loaded.get_intervention_graph(), model.get_intervention_graph())
    torch.manual_seed(1)
    a = model.get_marginal_ll(n_mc_samples=20)
    torch.manual_seed(1)
    b = loaded.get_marginal_ll(n_mc_samples=20)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_array_equal(loaded.validation_indices, model.validation_indices)
    assert list(loaded.history["elbo_train"].iloc[:, 0]) == pytest.approx(list(model.history["elbo_train"].iloc[:, 0]))
    assert loaded.is_trained_


def test_label_codes_follow_training_not_the_new_data(saved):
    """A file whose categories are ordered differently still maps labels to the trained rows."""
    folder, model = saved
    other = _sim()
    cats = list(other.obs["perturbation"].cat.categories)[::-1]
    other.obs["perturbation"] = other.obs["perturbation"].cat.reorder_categories(cats)
    loaded = sv.SVAEPlus.load(folder, adata=other)
    np.testing.assert_allclose(loaded.get_intervention_graph(), model.get_intervention_graph())


# --------------------------------------------------------------------------- refusals
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_WAS_RUN",))


def _copy(folder: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(folder, dest)
    return dest


def test_pickle_that_runs_code_is_refused(saved, tmp_path, monkeypatch):
    folder, _ = saved
    bad = _copy(folder, tmp_path / "bad")
    torch.save({"x": _Evil()}, bad / "weights.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="cannot be loaded safely"):
        sv.SVAEPlus.load(bad, adata=_sim())
    assert not (tmp_path / "EVIL_WAS_RUN").exists()


def test_old_pickled_format_is_refused_not_unpickled(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"attr_dict": _Evil()}, old / "model.pt")
    with pytest.raises(InputError, match="pickled scvi-tools model.pt"):
        sv.SVAEPlus.load(old, adata=_sim())


def test_newer_format_is_refused(saved, tmp_path):
    bad = _copy(saved[0], tmp_path / "newer")
    meta = json.loads((bad / "model.json").read_text())
    meta["format_version"] = 99
    meta["package_version"] = "9.0"
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="format 99.*upgrade"):
        sv.SVAEPlus.load(bad, adata=_sim())


def test_other_class_is_refused(saved):
    with pytest.raises(InputError, match="holds a SVAEPlus model, not a IVAE"):
        sv.IVAE.load(saved[0], adata=_sim())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a[:, 2:].copy(), "trained on 20 genes; the data lack 2"),
        (lambda a: a[:, ::-1].copy(), "another order"),
    ],
)
def test_other_genes_are_refused(saved, change, message):
    with pytest.raises(InputError, match=message):
        sv.SVAEPlus.load(saved[0], adata=change(_sim()))


def test_extra_genes_are_refused(saved):
    bigger = _sim(n_genes=25)
    with pytest.raises(InputError, match="5 genes the model"):
        sv.SVAEPlus.load(saved[0], adata=bigger)


def test_weights_of_another_shape_are_refused(saved, tmp_path):
    bad = _copy(saved[0], tmp_path / "shape")
    meta = json.loads((bad / "model.json").read_text())
    meta["init_params"]["non_kwargs"]["n_latent"] = 4
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not fit"):
        sv.SVAEPlus.load(bad, adata=_sim())


def test_damaged_description_is_one_line(saved, tmp_path):
    bad = _copy(saved[0], tmp_path / "damaged")
    (bad / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot be read"):
        sv.SVAEPlus.load(bad, adata=_sim())


# --------------------------------------------------------------------------- interrupted runs
@pytest.fixture(scope="module")
def screen(tmp_path_factory) -> Path:
    """2,400 cells: epochs long enough (tens of steps) to stop a run between checkpoints."""
    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    _sim(n_cells=400, n_perturbations=5, n_genes=30).write_h5ad(path)
    return path


TRAIN = ["train", "--n-latent", "2", "--max-epochs", "12", "--no-progress", "--ll-cells", "20", "--batch-size", "64"]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start(screen: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*SCVAE, *TRAIN, "--adata", str(screen), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # a child inherits an ignored SIGINT from the test process (left so by an earlier test's
        # library); give it the default disposition, as a terminal's child has
        preexec_fn=_default_sigint,
    )


def _wait_for_epoch(proc: subprocess.Popen, progress: Path, epoch: int, timeout: float = 240) -> int:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the interruption: {proc.communicate()}")
        try:
            reached = json.loads(progress.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            reached = 0
        if reached >= epoch:
            return reached
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def test_killed_run_leaves_nothing_and_resumes(screen, tmp_path):
    out = tmp_path / "run"
    progress = tmp_path / ".run.checkpoint" / "progress.json"
    before = _sha(screen)
    proc = _start(screen, out)
    reached = _wait_for_epoch(proc, progress, 2)
    os.kill(proc.pid, signal.SIGSTOP)  # freeze at once, then kill: no chance to finish or clean up
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not out.exists()
    stale = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert stale, "the killed process's temporary folder is expected (it cannot clean up)"
    assert reached < 12

    # without --resume the checkpoint is not silently thrown away
    runner = CliRunner()
    refused = runner.invoke(app, [*TRAIN, "--adata", str(screen), "--out", str(out)])
    assert refused.exit_code == 3 and "--resume" in refused.stderr, refused.stderr
    # --resume with other settings is refused
    changed = runner.invoke(app, [*[a if a != "12" else "13" for a in TRAIN], "--adata", str(screen),
                                  "--out", str(out), "--resume"])
    assert changed.exit_code == 2 and "max_epochs" in changed.stderr, changed.stderr

    resumed = runner.invoke(app, [*TRAIN, "--adata", str(screen), "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, (resumed.stdout, resumed.stderr, resumed.exception)
    summary = json.loads((out / "run.json").read_text())
    assert summary["timing"]["resumed_from_epoch"] >= 2
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 12  # every epoch, those before the kill included
    assert not (tmp_path / ".run.checkpoint").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # stale folder removed
    assert _sha(screen) == before
    run = load_run(out)
    assert np.isfinite(run.model.get_latent_representation()).all()
    assert summary["validation_likelihood"]["nll_mean"] > 0


def test_ctrl_c_exits_130_and_keeps_the_checkpoint(screen, tmp_path):
    out = tmp_path / "run"
    proc = _start(screen, out)
    _wait_for_epoch(proc, tmp_path / ".run.checkpoint" / "progress.json", 1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "--resume" in lines[0], stderr
    assert "Traceback" not in stderr and "Exception raised" not in stdout
    assert not out.exists()
    assert (tmp_path / ".run.checkpoint" / "last.ckpt").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_without_checkpoint_is_an_error(screen, tmp_path):
    result = CliRunner().invoke(app, [*TRAIN, "--adata", str(screen), "--out", str(tmp_path / "r"), "--resume"])
    assert result.exit_code == 2 and "no interrupted run" in result.stderr


def test_overwrite_starts_again(screen, tmp_path):
    ckpt = tmp_path / ".r.checkpoint"
    ckpt.mkdir()
    (ckpt / "last.ckpt").write_bytes(b"junk")
    (ckpt / "progress.json").write_text('{"epoch": 3, "max_epochs": 12}')
    args = ["train", "--n-latent", "2", "--max-epochs", "1", "--no-progress", "--ll-cells", "0",
            "--adata", str(screen), "--out", str(tmp_path / "r")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 3 and "epoch 3 of 12" in refused.stderr
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "r" / "run.json").exists() and not ckpt.exists()


def test_unsafe_checkpoint_is_refused_by_resume(screen, tmp_path, monkeypatch):
    settings = TrainSettings(adata=str(screen), out=str(tmp_path / "r"), max_epochs=5)
    directory = _prepare_checkpoints(settings, tmp_path / "r", "abc")
    torch.save({"x": _Evil()}, directory / "last.ckpt")
    (directory / "progress.json").write_text('{"epoch": 1, "max_epochs": 5}')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="cannot be loaded safely"):
        _safe_checkpoint(checkpoint_dir(tmp_path / "r"))
    assert not (tmp_path / "EVIL_WAS_RUN").exists()
