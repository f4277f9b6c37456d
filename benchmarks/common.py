"""Helpers shared by the benchmark scripts: machine description, load average, memory, atomic writes.

The scripts in ``benchmarks/`` are run as files (``python benchmarks/x.py``), so they import this
module by its file name (``benchmarks/`` is ``sys.path[0]`` then).
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import tempfile
from pathlib import Path

#: CPU flags worth recording for the fast path (AVX-512, bf16 and AMX support).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")


def rss_mib() -> float:
    """Current resident set size of this process (Linux ``/proc/self/statm``), MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``, KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loadavg() -> list[float]:
    """1/5/15-minute load average (empty where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    """CPU model and ISA flags, core count, torch/MONAI versions and threads of this machine."""
    import monai
    import torch

    model, isa = platform.processor() or "unknown", []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
        flags = set(next((ln for ln in out.splitlines() if ln.startswith("Flags:")), "").split())
        isa = [f for f in ISA_FLAGS if f in flags]
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": isa,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder (``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
