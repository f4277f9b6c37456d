"""Helpers shared by the benchmark scripts: machine description, load average, memory, atomic writes.

The scripts in ``benchmarks/`` are run as files (``python benchmarks/x.py``), so they import this
module by its file name (``benchmarks/`` is ``sys.path[0]`` then).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import traceback
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
    from scdl_monai.data.utils import atomic_write as write_atomically

    write_atomically(path, lambda tmp: tmp.write_text(text))


def error_row(spec: dict, err: BaseException, keys: tuple[str, ...]) -> dict:
    """The result row of a child that raised: ``spec``'s identifying ``keys`` + the first error line."""
    first = str(err).splitlines()[0] if str(err) else ""
    return {**{k: spec[k] for k in keys}, "status": "error", "error": f"{type(err).__name__}: {first}"[:300]}


def run_child(script: str, spec: dict, keys: tuple[str, ...], timeout: float, threads: int) -> dict:
    """``python script --child <spec>`` with ``threads`` OpenMP threads; its last stdout line is the row.

    A time-out, crash or non-JSON output becomes an error row (``keys`` of ``spec`` + ``error``) so
    the caller can report it instead of dropping the configuration.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, script, "--child", json.dumps(spec)]
    base = {k: spec[k] for k in keys}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**base, "status": "error", "error": f"timed out after {timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    err = next((ln for ln in reversed(tail) if ln.strip() and not ln.startswith(" ")), f"exit {proc.returncode}")
    return {**base, "status": "error", "error": err[-300:], "stderr_tail": proc.stderr[-4000:]}


def child_main(fn, payload: str, keys: tuple[str, ...]) -> int:
    """Body of ``--child``: run ``fn(spec)`` and print its row as the last stdout line (errors as rows)."""
    spec = json.loads(payload)
    try:
        row = fn(spec)
    except Exception as err:  # reported in the caller's table, never dropped
        traceback.print_exc()
        row = error_row(spec, err, keys)
    print(json.dumps(row))
    return 0
