"""What a process and its machine measure: peak and current resident memory, stages, threads.

Peak memory is the process's own peak resident set (``VmHWM`` of ``/proc/self/status``),
reset between stages where the kernel allows, so each stage has its own peak; the
anonymous and file-backed parts of the resident set are recorded at each stage's end.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from scperturb_vae.bench.constants import MB

__all__ = ["Stages", "default_threads", "machine_info", "thread_env"]


# =========================================================================== memory of a process
def _proc_status() -> dict[str, float]:
    """``VmHWM`` / ``VmRSS`` / ``RssAnon`` / ``RssFile`` of this process in MB (Linux), else the rusage peak.

    ``RssFile`` is mostly the pages of shared libraries touched so far (libtorch_cpu alone
    is several hundred MB); ``RssAnon`` is the memory the process allocated.
    """
    try:
        text = Path("/proc/self/status").read_text()
        found = {k: int(v) / 1024.0
                 for k, v in re.findall(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+)\s+kB", text, re.MULTILINE)}
        if "VmHWM" in found:
            return found
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / MB if sys.platform == "darwin" else peak / 1024.0
    return {"VmHWM": peak_mb, "VmRSS": float("nan")}


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Stages:
    """Seconds, peak RSS and RSS at the end of each stage of a child process."""

    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []
        self.resettable = _reset_peak()
        self._start = time.perf_counter()

    def done(self, name: str, **extra) -> None:
        status = _proc_status()
        now = time.perf_counter()
        self.stages.append({"stage": name, "seconds": now - self._start, "peak_rss_mb": status["VmHWM"],
                            "rss_mb": status.get("VmRSS", float("nan")),
                            "rss_anon_mb": status.get("RssAnon", float("nan")),
                            "rss_file_mb": status.get("RssFile", float("nan")), **extra})
        if self.resettable:
            self.resettable = _reset_peak()
        self._start = time.perf_counter()

    @property
    def peak_mb(self) -> float:
        return max(s["peak_rss_mb"] for s in self.stages)

    def peak_of(self, name: str) -> float:
        return next(s["peak_rss_mb"] for s in self.stages if s["stage"] == name)


# =========================================================================== threads and the machine
def default_threads() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_env(threads: int | None) -> dict[str, str]:
    """This environment with ``threads`` OpenMP / MKL / OpenBLAS / numexpr threads (for a child);
    ``None``: those left as the user set them."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        if threads is not None:
            env[key] = str(threads)
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def machine_info() -> dict[str, Any]:
    """The platform, CPUs (model, count, allowed), memory and load average of this machine."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": default_threads(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        info["cpu_model"] = found.group(1).strip() if found else platform.processor()
        meminfo = Path("/proc/meminfo").read_text()
        found = re.search(r"^MemTotal:\s+(\d+)\s+kB", meminfo, re.MULTILINE)
        if found:
            info["memory_total_gb"] = round(int(found.group(1)) / 1024**2, 2)
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        info["load_average_1min"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        pass
    return info

