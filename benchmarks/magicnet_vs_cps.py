"""Per-iteration time of MagicNet vs CPS (and GA-CPS) at one tiny size, on the current device.

One iteration = the method's training step + backward + optimizer step (+ the EMA teacher update
for MagicNet), batch 2 labeled + 2 unlabeled. Default size: 48³ patches, 16³ cubes (3×3×3 grid),
VNet n_filters 4 with batch norm (a 16³ cube has one bottleneck voxel, too few for InstanceNorm).
Prints a small table; no assertion. Example::

    python benchmarks/magicnet_vs_cps.py --patch 48 --cube 16 --n_filters 4 --iters 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from scdl_monai.methods.cps import CPS
from scdl_monai.methods.ga_cps import GACPS
from scdl_monai.methods.magicnet import MagicNet
from scdl_monai.networks.magicnet import MagicNetwork
from scdl_monai.networks.vnet import VNet


def build(name: str, num_classes: int, n_filters: int, norm: str, patch: int, cube: int):
    def vnet():
        return VNet(out_channels=num_classes, n_filters=n_filters, norm=norm)

    if name == "cps":
        return CPS(vnet(), vnet())
    if name == "ga_cps":
        return GACPS(vnet(), vnet())
    hidden = 4096 if n_filters >= 16 else 256
    student = MagicNetwork(vnet(), cube_size=cube, patch_size=patch, hidden_features=hidden)
    return MagicNet(student, num_classes, ga_losses=(name == "ga_magicnet"))


def time_method(name: str, args, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    method = build(name, args.num_classes, args.n_filters, args.norm, args.patch, args.cube).to(device).train()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    shape = (2, 1, args.patch, args.patch, args.patch)
    image_l, image_u = torch.randn(shape, device=device), torch.randn(shape, device=device)
    label_l = torch.randint(0, args.num_classes, shape, device=device)
    times = []
    for i in range(args.warmup + args.iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad()
        out = method.train_step(None, image_l, label_l, image_u)
        out.loss.backward()
        optimizer.step()
        if hasattr(method, "update_teacher"):
            method.update_teacher()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--cube", type=int, default=16)
    parser.add_argument("--n_filters", type=int, default=4)
    parser.add_argument("--norm", default="batch")
    parser.add_argument("--num_classes", type=int, default=14)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default="cps,ga_cps,magicnet,ga_magicnet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={args.threads} patch={args.patch}^3 cube={args.cube}^3 "
          f"n_filters={args.n_filters} norm={args.norm} C={args.num_classes} batch=2+2")
    results = {}
    for name in args.methods.split(","):
        times = time_method(name, args, device)
        results[name] = (statistics.median(times), min(times))
        median_ms, min_ms = results[name][0] * 1000, results[name][1] * 1000
        print(f"{name:12s} median {median_ms:8.1f} ms/iter  (min {min_ms:.1f}, n={len(times)})")
    if "cps" in results and "magicnet" in results:
        ratio_median = results["magicnet"][0] / results["cps"][0]
        ratio_min = results["magicnet"][1] / results["cps"][1]
        # on a shared machine the minimum is the least disturbed estimate
        print(f"magicnet / cps = {ratio_median:.2f}x (medians), {ratio_min:.2f}x (minima)")


if __name__ == "__main__":
    main()
