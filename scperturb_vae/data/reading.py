"""Input files: the checks of an ``.h5ad`` path (exists, a file, the HDF5 signature),
reading it read-only (:func:`read_h5ad_checked`), its SHA-256, and the one-line reason
of an exception used in messages.

Files are only read, never written; anndata is imported only when a file is read, so
that this module loads quickly.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import TYPE_CHECKING

from scperturb_vae.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["check_h5ad_file", "file_sha256", "read_h5ad_checked", "short_reason"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HASH_BLOCK = 1 << 20


def _has_hdf5_signature(path: pathlib.Path) -> bool:
    """Tell whether the file starts with the HDF5 signature.

    The signature may also sit at a user-block offset (512, 1024, 2048, ... bytes).
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        offset = 0
        while offset + len(_HDF5_SIGNATURE) <= size:
            handle.seek(offset)
            if handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                return True
            offset = 512 if offset == 0 else offset * 2
    return False


def short_reason(error: BaseException, limit: int = 200) -> str:
    """One short line describing ``error``."""
    text = str(error).strip().splitlines()
    reason = text[0].strip() if text else ""
    if len(reason) > limit:
        reason = reason[: limit - 3] + "..."
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def check_h5ad_file(path: str | os.PathLike[str]) -> pathlib.Path:
    """Check that ``path`` is an existing, readable HDF5 file and return it."""
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an .h5ad file")
    try:
        is_hdf5 = _has_hdf5_signature(path)
    except OSError as error:
        raise InputError(f"cannot open {path}: {short_reason(error)}") from error
    if not is_hdf5:
        raise InputError(f"{path} is not an HDF5/h5ad file (no HDF5 signature)")
    return path


def read_h5ad_checked(path: str | os.PathLike[str], *, backed: bool = False) -> anndata.AnnData:
    """Read an ``.h5ad`` file fully into memory (or open it backed), read-only.

    Parameters
    ----------
    path
        The file to read.
    backed
        Open the file read-only in backed mode: ``obs``, ``var`` and ``obsm`` are read,
        the count matrix stays on disk and is read in blocks (out of core).

    Returns
    -------
    anndata.AnnData
        The in-memory AnnData (the file is closed on return), or the backed one.

    Raises
    ------
    InputError
        When the path does not exist, is a directory, is not an HDF5 file, or
        cannot be read as h5ad (truncated or corrupted).
    """
    path = check_h5ad_file(path)
    import anndata  # deferred: importing anndata takes a while

    try:
        return anndata.read_h5ad(path, backed="r") if backed else anndata.read_h5ad(path)
    except MemoryError:
        raise
    except Exception as error:
        raise InputError(f"cannot read {path} as h5ad: {short_reason(error)}") from error


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
