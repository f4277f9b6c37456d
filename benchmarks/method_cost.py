"""Per-iteration time and peak memory of SSL methods (GenericSSL vs CPS) at one tiny size.

One iteration = ``method.train_step`` (GenericSSL: decoder EMA + D_ξ/D_ψ passes + 10-step DDIM and
D_ψ on the unlabeled half + D_θ) + backward + optimizer step, batch ``B`` labeled + ``B``
unlabeled, SGD over all trainable parameters. Every method runs in its **own subprocess**, so the
memory peaks do not mix:

* CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set) of that process, and the
  increase of that peak over the resident set measured just before the first iteration (method
  built, batch allocated) — the training step's working set;
* CUDA: ``torch.cuda.max_memory_allocated`` over the iterations (reset before the first).

Times are medians over ``--iters`` iterations after ``--warmup``: wall clock, and the process CPU
time (``time.process_time``), which is the steadier number on a shared CPU with ``--threads 1``. Prints a table and one JSON line
per method; no assertion. Example::

    python benchmarks/method_cost.py --methods cps,genericssl --patch 32 --n_filters 4 --batch 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

METHODS = ("cps", "genericssl")


def _rss_mib() -> float:
    """Current resident set size (Linux ``/proc/self/statm``), MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(name: str, num_classes: int, n_filters: int):
    if name == "cps":
        from scdl_monai.methods.cps import CPS
        from scdl_monai.networks.vnet import VNet

        return CPS(*(VNet(out_channels=num_classes, n_filters=n_filters) for _ in range(2)))
    if name == "genericssl":
        from scdl_monai.methods.genericssl import GenericSSL
        from scdl_monai.networks.diffvnet import DiffVNet

        return GenericSSL(DiffVNet(out_channels=num_classes, n_filters=n_filters), num_classes=num_classes)
    raise ValueError(f"--methods: unknown method {name!r}, expected one of {METHODS}.")


def worker(args) -> dict:
    """Measure one method in this process; returns the result row."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    method = build(args.worker, args.num_classes, args.n_filters).to(device).train()
    method.set_unsup_weight(1.0)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    shape = (args.batch, 1, args.patch, args.patch, args.patch)
    image_l, image_u = torch.randn(shape, device=device), torch.randn(shape, device=device)
    label_l = torch.randint(0, args.num_classes, shape, device=device)
    rss_before = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for i in range(args.warmup + args.iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad()
        out = method.train_step(None, image_l, label_l, image_u)
        out.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    row = {
        "method": args.worker,
        "params": sum(p.numel() for p in method.parameters()),
        "ms_per_iter": 1000 * statistics.median(times),
        "ms_min": 1000 * min(times),
        "cpu_ms_per_iter": 1000 * statistics.median(cpu_times),
        "iters": len(times),
        "peak_rss_mib": _peak_rss_mib(),
        "step_rss_mib": _peak_rss_mib() - rss_before,
    }
    if device.type == "cuda":
        row["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="cps,genericssl", help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--patch", type=int, default=32, help="cubic patch size (divisible by 16)")
    parser.add_argument("--n_filters", type=int, default=4)
    parser.add_argument("--num_classes", type=int, default=14)
    parser.add_argument("--batch", type=int, default=2, help="labeled = unlabeled batch size")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return 0
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    for name in names:
        if name not in METHODS:
            parser.error(f"--methods: unknown method {name!r}, expected a subset of {METHODS}")
    print(
        f"device={args.device} threads={args.threads} patch={args.patch}^3 n_filters={args.n_filters} "
        f"C={args.num_classes} batch={args.batch}+{args.batch}"
    )
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--worker", name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        extra = f"  cuda peak {row['cuda_peak_mib']:8.1f} MiB" if "cuda_peak_mib" in row else ""
        print(
            f"{name:11s} {row['params']:>10,d} params  {row['ms_per_iter']:9.1f} ms/iter (min {row['ms_min']:.1f}, "
            f"CPU {row['cpu_ms_per_iter']:.1f})"
            f"  peak RSS {row['peak_rss_mib']:7.1f} MiB  step +{row['step_rss_mib']:7.1f} MiB{extra}"
        )
    by_name = {r["method"]: r for r in rows}
    if "cps" in by_name and "genericssl" in by_name:
        g, c = by_name["genericssl"], by_name["cps"]
        ratio = (
            f"time {g['ms_per_iter'] / c['ms_per_iter']:.2f}x (CPU time {g['cpu_ms_per_iter'] / c['cpu_ms_per_iter']:.2f}x), "
            f"step memory {g['step_rss_mib'] / max(c['step_rss_mib'], 1e-9):.2f}x"
        )
        if "cuda_peak_mib" in g:
            ratio += f", cuda peak {g['cuda_peak_mib'] / c['cuda_peak_mib']:.2f}x"
        print(f"genericssl / cps: {ratio}")
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
