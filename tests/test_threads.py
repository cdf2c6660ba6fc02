"""The thread setting (scperturb_vae.threads): the cores less the load, overridden by the
option or SCVAE_THREADS, and torch's count kept across numba calls."""

from __future__ import annotations

import pytest

from scperturb_vae.errors import InputError
from scperturb_vae.threads import available_cores, default_threads, keep_torch_threads, resolve_threads


def test_default_is_the_free_cores_and_at_least_one():
    cores = available_cores()
    assert default_threads(load=0.0) == cores
    assert default_threads(load=cores - 1) == 1 or cores == 1
    assert default_threads(load=10 * cores) == 1  # a loaded machine: one thread
    assert 1 <= default_threads() <= cores


def test_option_then_environment_then_default(monkeypatch):
    monkeypatch.setenv("SCVAE_THREADS", "3")
    assert resolve_threads(2) == (2, "--threads")
    assert resolve_threads() == (3, "SCVAE_THREADS")
    monkeypatch.setenv("SCVAE_THREADS", "many")
    with pytest.raises(InputError, match="SCVAE_THREADS"):
        resolve_threads()
    monkeypatch.delenv("SCVAE_THREADS")
    count, source = resolve_threads()
    assert 1 <= count <= available_cores() and "less the busy ones" in source
    with pytest.raises(InputError, match="--threads"):
        resolve_threads(0)


def test_torch_threads_survive_a_call_that_changes_them():
    import torch

    before = torch.get_num_threads()
    with keep_torch_threads():
        torch.set_num_threads(max(1, before + 1))  # what numba's OpenMP layer does to torch
    assert torch.get_num_threads() == before


def test_busy_cores_sees_a_process_that_keeps_a_core_busy():
    import subprocess
    import sys
    import time

    from scperturb_vae.threads import busy_cores

    if busy_cores() is None:
        pytest.skip("no /proc/stat on this system")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = busy_cores(window=0.3)
    finally:
        burner.kill()
        burner.wait()
    assert busy >= 0.8  # the burner's core, whatever else runs
    assert default_threads(load=busy) <= max(1, available_cores() - 0.8 + 0.5)
