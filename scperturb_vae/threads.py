"""How many CPU threads torch trains with.

torch's default is every core it sees.  That is the faster choice on an idle machine (a
9.8k x 1,000 screen on 2 idle cores: 0.85 s an epoch with 2 threads against 1.26 s with
one), and about 3x slower than one thread when other processes already keep the cores busy,
as oversubscribed threads wait on each other.  :func:`default_threads` therefore takes the
cores this process may use (its CPU affinity) less the cores the other processes keep busy
now (:func:`busy_cores`: the machine's CPU time over a tenth of a second while this process
sleeps), and at least one.  The 1-minute load average, used before, still counts a process
that ended a minute ago: a command started right after another one got one thread on an
idle machine.  ``SCVAE_THREADS`` or a command's ``--threads`` override it.

numba (``sc.tl.umap``) and other OpenMP users can change torch's thread count inside a
process; :func:`keep_torch_threads` restores it after such a call.
"""

from __future__ import annotations

import contextlib
import os
import sys

from scperturb_vae.errors import InputError

__all__ = ["ENV_VAR", "available_cores", "busy_cores", "default_threads", "resolve_threads", "set_torch_threads",
           "keep_torch_threads"]

#: environment variable that fixes the thread count
ENV_VAR = "SCVAE_THREADS"


def available_cores() -> int:
    """The cores this process may run on (its affinity where the system has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def busy_cores(window: float = 0.1) -> float | None:
    """Cores the machine's processes keep busy now (``/proc/stat`` over ``window`` seconds,
    this process asleep meanwhile); None where the system has no ``/proc/stat``."""
    import time

    def sample() -> tuple[float, float]:
        with open("/proc/stat") as f:
            values = [float(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
        return sum(values[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    return (1.0 - (idle1 - idle0) / elapsed) * (os.cpu_count() or 1)


def default_threads(load: float | None = None) -> int:
    """The available cores less the busy ones (:func:`busy_cores`, else the 1-minute load
    average), at least one.  ``load`` gives the busy cores instead of measuring them."""
    cores = available_cores()
    if load is None:
        load = busy_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover
            load = 0.0
    return int(min(cores, max(1, round(cores - float(load)))))


def resolve_threads(threads: int | None = None) -> tuple[int, str]:
    """``(threads, where the number came from)``: the argument, ``SCVAE_THREADS``, or the default."""
    if threads is not None:
        source = "--threads"
    elif os.environ.get(ENV_VAR, "").strip():
        text = os.environ[ENV_VAR].strip()
        if not text.isdigit():
            raise InputError(f"{ENV_VAR} must be a positive integer, not {text!r}")
        threads, source = int(text), ENV_VAR
    else:
        return default_threads(), f"{available_cores()} cores less the busy ones (the load)"
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise InputError(f"--threads must be a positive integer, not {threads!r}")
    return int(threads), source


def set_torch_threads(threads: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads to :func:`resolve_threads`; returns what it set and why."""
    import torch

    count, source = resolve_threads(threads)
    torch.set_num_threads(count)
    return count, source


@contextlib.contextmanager
def keep_torch_threads():
    """Restore torch's thread count after the block (numba / OpenMP calls can change it).

    Nothing to do (and torch is not imported) when torch has not been loaded.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
