"""Atomic outputs: a result appears under its final name complete, or not at all.

Files are written to a temporary sibling and moved into place with :func:`os.replace`;
run folders are built in a temporary sibling folder and renamed (a temporary folder left by
a killed process is removed by the next write of the same output).  An existing output is
refused unless ``overwrite`` is given, and then it is only removed after the new one is
complete.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scperturb_vae.errors import OutputError

__all__ = ["check_output", "atomic_path", "atomic_dir", "json_ready", "write_json", "package_versions"]


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output (unless ``overwrite``) and check that it could be written.

    Nothing is created: the nearest existing ancestor folder must be a writable folder (the
    missing ones are made when the output is written).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists already; pass --overwrite to replace it")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot write {path}: {ancestor} is a file, not an output folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: no permission to write in the output folder {ancestor}")
    return path


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output folder {path.parent}: {err.strerror or err}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; move it onto ``path`` when the block succeeds."""
    path = check_output(path, overwrite)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask
    try:
        yield tmp
        if path.exists() and not overwrite:  # appeared meanwhile
            raise OutputError(f"{path} exists already; pass --overwrite to replace it")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` when the block succeeds.

    On any error (or Ctrl-C) the temporary folder is removed and an existing ``path`` is
    left untouched.
    """
    path = check_output(path, overwrite)
    _make_parent(path)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    owner = tmp / _OWNER
    owner.write_text(f"{socket.gethostname()} {os.getpid()}\n")
    old = None
    try:
        yield tmp
        owner.unlink(missing_ok=True)
        if path.exists():
            if not overwrite:
                raise OutputError(f"{path} exists already; pass --overwrite to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


_OWNER = ".scvae-owner"


def _remove_stale(path: Path) -> None:
    """Remove temporary folders of ``path`` left by a killed process of this machine.

    A temporary folder names its writer (host and process id) in ``.scvae-owner``; one
    whose process is gone was never completed and is removed.  Folders of live processes,
    of other machines, or without an owner file are left alone.
    """
    host = socket.gethostname()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            owner_host, pid = (candidate / _OWNER).read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            continue
        if owner_host != host or pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(candidate, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def package_versions() -> dict[str, str]:
    """Python's and the main packages' versions, for run records."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("scperturb-vae", "scvi-tools", "torch", "lightning", "anndata", "numpy", "scipy", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON data: NaN and infinities -> None, numpy scalars and arrays ->
    Python numbers and lists, paths -> strings, tuples -> lists, keys -> strings."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: Any, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``data`` as strict JSON (:func:`json_ready`; sorted keys, indented), atomically."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(json_ready(data), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path
