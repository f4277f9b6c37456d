"""Fast path benchmark: fp32 default vs the precision policy, side by side.

One run measures all configurations side by side. Times: every configuration is built in one
subprocess and the measured iterations are interleaved round-robin, so a change of machine load
(the 2 cores are shared) hits all of them alike; wall and process-CPU seconds are both recorded.
Peak memory: ``ru_maxrss`` of one short subprocess per configuration (peaks do not mix).
``--no-interleave`` (default with ``--quick``) times each configuration in its own process.

* **training**: seconds per iteration of :class:`~scdl_monai.engines.trainer.SemiSupervisedTrainer`
  running DHC (``scdl_monai.methods.dhc.DHC``; CPS when DHC cannot be imported, reported) at the
  reference configuration — two VNets, ``n_filters`` 32, 14 classes, dropout on as the references
  train, batch 2 labeled + 2 unlabeled patches of 32×64×64, SGD — for ``fp32`` (default layout),
  ``bf16`` (autocast), ``fast``
  (bf16 + channels_last_3d + conv guard, the recommended CPU policy) and ``fast_noguard`` (the
  same without the conv guard: its cost; its gradients may be wrong, see scdl_monai.engines.cpu_bf16);
  medians over the iterations after warm-up;
* **inference**: whole-volume sliding-window throughput (voxels/s) of one such VNet (eval mode),
  MONAI's default path (``SlidingWindowInferer(roi, sw_batch_size=1)``, fp32) vs
  :class:`~scdl_monai.engines.policy_inferer.PolicyInferer` (bf16, channels-last, ``sw_batch_size`` 4), same
  network weights, window and overlap; plus the fraction of voxels whose argmax agrees;
* **peak memory**: ``ru_maxrss`` of each subprocess, and its increase over the resident set just
  before the first measured step;
* the machine: CPU model, cores, torch version and threads, load average before and after.

``--parity`` instead trains CPS on the phantom (``scdl_monai.data.phantom``) in fp32 and with the
fast path (same seeds, same data order) and reports the final per-class Dice on the held-out
cases (:func:`scdl_monai.evaluation.metrics.evaluate_case`).

Outputs: a Markdown table on stdout and in ``benchmarks/results/fastpath.md`` (``fastpath_parity.md``),
JSON in ``benchmarks/results/fastpath.json`` (``fastpath_parity.json``), written atomically.
``--quick`` shrinks everything to seconds (CI smoke test; numbers meaningless). Examples::

    python benchmarks/fastpath.py                 # ~5 min on 2 cores
    python benchmarks/fastpath.py --quick --out /tmp/fp.json
    python benchmarks/fastpath.py --parity --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import atomic_write, loadavg, machine_info, peak_rss_mib, rss_mib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# measure this checkout's package, not an installed copy (a script's sys.path[0] is benchmarks/)
sys.path.insert(0, str(ROOT))

TRAIN_CONFIGS = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "bf16": {"precision": "bf16", "channels_last": False},
    "fast": {"precision": "bf16", "channels_last": True},
    "fast_noguard": {"precision": "bf16", "channels_last": True, "conv_guard": False},
}
INFER_CONFIGS = ("monai_fp32", "policy_fast")

#: reference configuration of the fast-path target (docs/performance.md): DHC on Synapse, 14 classes, n_filters 32.
FULL = {
    "n_filters": 32, "num_classes": 14, "batch_l": 2, "batch_u": 2, "patch": (32, 64, 64),
    "volume": (80, 160, 160), "roi": (32, 64, 64), "sw_batch_size": 1, "warmup": 2, "iters": 5, "infer_reps": 2,
}  # fmt: skip
QUICK = {
    "n_filters": 4, "num_classes": 3, "batch_l": 1, "batch_u": 1, "patch": (16, 16, 16),
    "volume": (24, 32, 32), "roi": (16, 16, 16), "sw_batch_size": 2, "warmup": 1, "iters": 2, "infer_reps": 1,
}  # fmt: skip


# ------------------------------------------------------------------------------------ helpers
#: training target (fast / fp32 time per iteration) by CPU kind: AMX tiles, else AVX512-BF16 only.
TRAIN_TARGETS = {"amx": 0.30, "no_amx": 0.33}


def train_ratio_target(isa: list[str]) -> float:
    """The fast/fp32 training-time target for a CPU with these ISA flags."""
    return TRAIN_TARGETS["amx" if "amx_bf16" in isa else "no_amx"]


def machine_label(machine: dict) -> str:
    """Short machine description for report titles, e.g. 'AMD EPYC, 2 cores, AVX512-BF16 without AMX'."""
    isa = machine["isa"]
    kind = "AMX" if "amx_bf16" in isa else ("AVX512-BF16 without AMX" if "avx512_bf16" in isa else "no bf16 ISA")
    return f"{machine['cpu']}, {machine['cores']} cores, {kind}"


# ------------------------------------------------------------------------------------ children
def _build_method(size: dict):
    import torch

    from scdl_monai.networks.vnet import VNet

    torch.manual_seed(0)
    # dropout on, as the references train (xmed-lab/DHC:code/train_dhc.py builds VNet(..., has_dropout=True))
    nets = [
        VNet(out_channels=size["num_classes"], n_filters=size["n_filters"], has_dropout=True) for _ in range(2)
    ]
    try:
        from scdl_monai.methods.dhc import DHC
    except ImportError:
        from scdl_monai.methods.cps import CPS

        return CPS(*nets), "CPS"
    counts = [10.0**6] + [10.0 ** (5 - k % 4) for k in range(size["num_classes"] - 1)]
    return DHC(*nets, num_classes=size["num_classes"], init_counts=counts), "DHC"


def _build_trainer(config: str, size: dict):
    import torch
    from torch.utils.data import DataLoader

    from scdl_monai.engines.trainer import SemiSupervisedTrainer
    from scdl_monai.engines.precision import PrecisionPolicy

    method, method_name = _build_method(size)
    g = torch.Generator().manual_seed(1)
    c, patch = size["num_classes"], tuple(size["patch"])
    lab = [{"image": torch.randn(1, *patch, generator=g), "label": torch.randint(0, c, (1, *patch), generator=g)}
           for _ in range(size["batch_l"])]  # fmt: skip
    unl = [{"image": torch.randn(1, *patch, generator=g)} for _ in range(size["batch_u"])]
    optimizers = [torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9) for net in method.networks().values()]
    method.set_unsup_weight(0.1)
    trainer = SemiSupervisedTrainer(
        "cpu", 1, DataLoader(lab, batch_size=size["batch_l"]), DataLoader(unl, batch_size=size["batch_u"]),
        method, optimizers, decollate=False, precision=PrecisionPolicy(**TRAIN_CONFIGS[config]),
    )  # fmt: skip
    return trainer, next(iter(trainer.data_loader)), method_name


def train_child(configs: list[str], size: dict) -> dict:
    """Time trainer iterations of several configurations in this process, interleaved.

    Each configuration gets its own DHC/CPS + trainer; after ``warmup`` iterations of each, the
    measured iterations run round-robin (fp32, fast, fp32, fast, ...) so a change of machine load
    affects all configurations alike. One iteration = ``trainer._iteration`` (what ignite calls:
    batch preparation, forward under the policy, backward, optimizer steps). Wall and process CPU
    seconds are recorded; ``ru_maxrss`` is per configuration only when there is one.
    """
    import torch

    rss_start = rss_mib()
    built = {config: _build_trainer(config, size) for config in configs}
    rows = {c: {"times_s": [], "cpu_s": [], "warmup_s": [], "losses": []} for c in configs}

    def step(config: str, key: str) -> None:
        trainer, batch, _ = built[config]
        t, cpu = time.perf_counter(), time.process_time()
        out = trainer._iteration(trainer, batch)
        rows[config][key].append(round(time.perf_counter() - t, 4))
        if key == "times_s":
            rows[config]["cpu_s"].append(round(time.process_time() - cpu, 4))
        rows[config]["losses"].append(round(float(out["loss"]), 5))

    for config in configs:
        for _ in range(size["warmup"]):
            step(config, "warmup_s")
    for i in range(size["iters"]):
        order = configs if i % 2 == 0 else configs[::-1]
        for config in order:
            step(config, "times_s")
    for config, (trainer, _, method_name) in built.items():
        rows[config].update(
            method=method_name,
            policy=trainer.precision.describe(),
            finite_grads=all(
                bool(torch.isfinite(p.grad).all()) for p in trainer.method.parameters() if p.grad is not None
            ),
        )
    return {
        "kind": "train",
        "configs": configs,
        "rows": rows,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_start_mib": round(rss_start, 1),
        "threads": torch.get_num_threads(),
    }


def infer_child(configs: list[str], size: dict, argmax_dir: str | None) -> dict:
    """Whole-volume sliding-window inference of one VNet: MONAI's default path and/or ours, interleaved."""
    import copy

    import numpy as np
    import torch
    from monai.inferers import SlidingWindowInferer

    from scdl_monai.networks.vnet import VNet
    from scdl_monai.engines.policy_inferer import PolicyInferer

    rss_start = rss_mib()
    torch.manual_seed(0)
    net = VNet(out_channels=size["num_classes"], n_filters=size["n_filters"]).eval()
    volume = torch.randn(1, 1, *size["volume"], generator=torch.Generator().manual_seed(2))
    roi = tuple(size["roi"])
    setups = {}
    for config in configs:
        if config == "monai_fp32":
            inferer = SlidingWindowInferer(roi, sw_batch_size=1, overlap=0.25)
            policy = {"precision": "fp32", "channels_last": False, "sw_batch_size": 1}
        else:
            inferer = PolicyInferer(
                roi, precision="bf16", channels_last=True, sw_batch_size=size["sw_batch_size"], overlap=0.25
            )
            policy = {**inferer.policy_for("cpu").describe(), "sw_batch_size": size["sw_batch_size"]}
        setups[config] = (inferer, copy.deepcopy(net), policy)  # own copy: ours re-lays out the weights
    rows = {c: {"times_s": [], "cpu_s": []} for c in configs}
    with torch.no_grad():
        for config, (inferer, network, _) in setups.items():  # warm-up on one window (oneDNN primitives)
            inferer(volume[..., : roi[0], : roi[1], : roi[2]], network)
        for i in range(size["infer_reps"]):
            for config in configs if i % 2 == 0 else configs[::-1]:
                inferer, network, _ = setups[config]
                t, cpu = time.perf_counter(), time.process_time()
                out = inferer(volume, network)
                rows[config]["times_s"].append(round(time.perf_counter() - t, 4))
                rows[config]["cpu_s"].append(round(time.process_time() - cpu, 4))
                if argmax_dir and i == 0:
                    np.save(os.path.join(argmax_dir, f"{config}.npy"), out.argmax(1).to(torch.uint8).numpy())
                rows[config]["out_dtype"] = str(out.dtype)
                del out
    for config, (_, _, policy) in setups.items():
        rows[config]["policy"] = policy
    return {
        "kind": "infer",
        "configs": configs,
        "rows": rows,
        "voxels": volume[0, 0].numel(),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_start_mib": round(rss_start, 1),
        "threads": torch.get_num_threads(),
    }


def _run_child(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {spec['kind']}/{spec.get('configs')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ speed
def _summary(times: list[float], cpu: list[float]) -> dict:
    return {
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "median_cpu_s": round(statistics.median(cpu), 3),
        "times_s": times,
        "cpu_s": cpu,
    }


def run_speed(size: dict, train_configs: list[str], quick: bool, interleave: bool) -> dict:
    """Timing (interleaved in one process, or one process per configuration) + memory children."""
    import numpy as np

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = loadavg()
    mem_size = {**size, "warmup": 1, "iters": 1, "infer_reps": 1}
    train, infer, memory = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if interleave:
            timing = _run_child({"kind": "train", "configs": train_configs, "size": size})
            t_rows = timing["rows"]
            inf = _run_child({"kind": "infer", "configs": list(INFER_CONFIGS), "size": size, "argmax": tmp})
            i_rows, voxels = inf["rows"], inf["voxels"]
            for config in train_configs:  # memory: one process per configuration
                memory[config] = _run_child({"kind": "train", "configs": [config], "size": mem_size})["peak_rss_mib"]
            for config in INFER_CONFIGS:
                memory[config] = _run_child({"kind": "infer", "configs": [config], "size": mem_size, "argmax": None})[
                    "peak_rss_mib"
                ]
        else:
            t_rows, i_rows = {}, {}
            for config in train_configs:
                child = _run_child({"kind": "train", "configs": [config], "size": size})
                t_rows[config], memory[config] = child["rows"][config], child["peak_rss_mib"]
            for config in INFER_CONFIGS:
                child = _run_child({"kind": "infer", "configs": [config], "size": size, "argmax": tmp})
                i_rows[config], memory[config], voxels = child["rows"][config], child["peak_rss_mib"], child["voxels"]
        ref, ours = (np.load(os.path.join(tmp, f"{name}.npy")) for name in ("monai_fp32", "policy_fast"))
        agree = float((ref == ours).mean())
    load_after = loadavg()

    for config in train_configs:
        row = t_rows[config]
        train[config] = {
            **_summary(row["times_s"], row["cpu_s"]),
            "peak_rss_mib": memory[config],
            "finite_grads": row["finite_grads"],
            "policy": row["policy"],
            "method": row["method"],
        }
    for config in INFER_CONFIGS:
        row = i_rows[config]
        s = _summary(row["times_s"], row["cpu_s"])
        infer[config] = {
            **s,
            "voxels_per_s": round(voxels / s["median_s"]),
            "voxels_per_cpu_s": round(voxels / s["median_cpu_s"]),
            "peak_rss_mib": memory[config],
            "policy": row["policy"],
        }
    base = train.get("fp32")
    for row in train.values():
        row["ratio_to_fp32"] = round(row["median_s"] / base["median_s"], 3)
        row["cpu_ratio_to_fp32"] = round(row["median_cpu_s"] / base["median_cpu_s"], 3)
        row["min_ratio_to_fp32"] = round(row["min_s"] / base["min_s"], 3)
    speedup = infer["policy_fast"]["voxels_per_s"] / infer["monai_fp32"]["voxels_per_s"]
    cpu_speedup = infer["policy_fast"]["voxels_per_cpu_s"] / infer["monai_fp32"]["voxels_per_cpu_s"]
    fast_ratio = train.get("fast", {}).get("ratio_to_fp32")
    fast_cpu_ratio = train.get("fast", {}).get("cpu_ratio_to_fp32")
    machine = machine_info()
    target = train_ratio_target(machine["isa"])
    return {
        "benchmark": "fastpath",
        "quick": quick,
        "interleaved": interleave,
        "started": started,
        "machine": machine,
        "machine_label": machine_label(machine),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "size": size,
        "method": train["fp32"]["method"],
        "train": train,
        "inference": infer,
        "inference_speedup": round(speedup, 2),
        "inference_cpu_speedup": round(cpu_speedup, 2),
        "inference_argmax_agreement": round(agree, 5),
        "acceptance": {
            "train_fast_ratio_target": target,
            "train_fast_ratio": fast_ratio,
            "train_fast_cpu_ratio": fast_cpu_ratio,
            "train_pass": None if fast_ratio is None else bool(fast_ratio <= target),
            "train_cpu_pass": None if fast_cpu_ratio is None else bool(fast_cpu_ratio <= target),
            "inference_speedup_target": 3.0,
            "inference_speedup": round(speedup, 2),
            "inference_pass": bool(speedup >= 3.0),
        },
    }


def speed_markdown(res: dict) -> str:
    m, s = res["machine"], res["size"]
    how = (
        "all configurations in one process, iterations interleaved round-robin; "
        "peak RSS from one process per configuration"
        if res["interleaved"]
        else "one process per configuration"
    )
    lines = [
        "## Fast path benchmark "
        f"({'QUICK smoke sizes, numbers meaningless' if res['quick'] else 'reference configuration'}) "
        f"on {res.get('machine_label', m['cpu'])}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['isa'])}), torch {m['torch']} "
        f"({m['torch_threads']} threads, {m['cpu_capability']}), MONAI {m['monai']}. Started {res['started']}; "
        f"load average (1/5/15 min) before {res['load_average_before']}, after {res['load_average_after']} "
        "(the 2 cores are shared with other jobs: wall times are noisy; CPU seconds are less load-sensitive).",
        "",
        f"Training: {res['method']} trainer iteration, 2 VNets n_filters {s['n_filters']}, {s['num_classes']} classes, "
        f"dropout on (Dropout3d 0.5, as the references train), batch {s['batch_l']}+{s['batch_u']} of "
        f"{'x'.join(map(str, s['patch']))}, SGD; "
        f"{s['iters']} measured iterations per configuration after {s['warmup']} warm-up ({how}).",
        "",
        "| configuration | policy | wall s/it median | min | x fp32 (median) | x fp32 (min) | CPU s/it median "
        "| x fp32 (CPU) | peak RSS MiB | finite grads |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in res["train"].items():
        p = row["policy"]
        desc = p["precision"] + (" + channels_last" if p["channels_last"] else "")
        desc += " + guard" if p["conv_guard"] else ""
        lines.append(
            f"| {name} | {desc} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['ratio_to_fp32']:.3f} | "
            f"{row['min_ratio_to_fp32']:.3f} | {row['median_cpu_s']:.3f} | {row['cpu_ratio_to_fp32']:.3f} | "
            f"{row['peak_rss_mib']:.0f} | {row['finite_grads']} |"
        )
    lines += [
        "",
        f"Inference: one VNet (same weights), volume {'x'.join(map(str, s['volume']))}, window "
        f"{'x'.join(map(str, s['roi']))}, overlap 0.25, {s['infer_reps']} timed volume(s) per path "
        "after a one-window warm-up.",
        "",
        "| path | policy | sw_batch_size | wall s/volume | voxels/s | x MONAI | CPU s/volume | x MONAI (CPU) "
        "| peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = res["inference"]["monai_fp32"]
    for name, row in res["inference"].items():
        p = row["policy"]
        desc = f"{p['precision']}{' + channels_last' if p['channels_last'] else ''}"
        lines.append(
            f"| {name} | {desc} | {p['sw_batch_size']} | {row['median_s']:.2f} | {row['voxels_per_s']:,} | "
            f"{row['voxels_per_s'] / base['voxels_per_s']:.2f} | {row['median_cpu_s']:.2f} | "
            f"{base['median_cpu_s'] / row['median_cpu_s']:.2f} | {row['peak_rss_mib']:.0f} |"
        )
    a = res["acceptance"]
    lines += [
        "",
        f"Argmax agreement fast vs MONAI fp32: {100 * res['inference_argmax_agreement']:.3f}% of voxels.",
        "",
        f"Acceptance on {res.get('machine_label', m['cpu'])}: training fast/fp32 = {a['train_fast_ratio']} wall, "
        f"{a.get('train_fast_cpu_ratio')} CPU (target <= {a['train_fast_ratio_target']}: "
        f"{'PASS' if a['train_pass'] else 'MISS'} wall, {'PASS' if a.get('train_cpu_pass') else 'MISS'} CPU); "
        f"inference speed-up = {a['inference_speedup']}x "
        f"(target >= {a['inference_speedup_target']}: {'PASS' if a['inference_pass'] else 'MISS'}).",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ parity
PARITY_FULL = {
    "num_cases": 8, "shape": (64, 64, 48), "patch": (48, 48, 32), "n_filters": 8, "iterations": 120,
    "batch_l": 2, "batch_u": 2, "lr": 0.05, "roi": (48, 48, 32),
}  # fmt: skip
PARITY_QUICK = {
    "num_cases": 5, "shape": (32, 32, 32), "patch": (16, 16, 16), "n_filters": 4, "iterations": 3,
    "batch_l": 1, "batch_u": 1, "lr": 0.05, "roi": (16, 16, 16),
}  # fmt: skip


def parity_child(config: str, seed: int, size: dict, datalist: str) -> dict:
    """Train CPS on the phantom with one policy and evaluate the held-out cases."""
    import numpy as np
    import torch
    from monai.data import DataLoader, Dataset
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandSpatialCropd,
        ScaleIntensityRanged,
    )
    from monai.utils import set_determinism

    from scdl_monai.engines.trainer import SemiSupervisedTrainer
    from scdl_monai.evaluation.metrics import evaluate_case
    from scdl_monai.methods.cps import CPS
    from scdl_monai.networks.vnet import VNet
    from scdl_monai.engines.policy_inferer import PolicyInferer
    from scdl_monai.engines.precision import PrecisionPolicy

    data = json.loads(Path(datalist).read_text())
    c = 14  # phantom labels are Synapse ids 0..13
    set_determinism(seed)
    keys = ["image", "label"]
    window = ScaleIntensityRanged("image", a_min=-125, a_max=275, b_min=0.0, b_max=1.0, clip=True)
    crop_l = RandSpatialCropd(keys, roi_size=size["patch"], random_size=False)
    crop_u = RandSpatialCropd("image", roi_size=size["patch"], random_size=False)
    lab_tf = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), window, crop_l])
    unl_tf = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), window, crop_u])
    lab = DataLoader(Dataset(data["training"] * 8, lab_tf), batch_size=size["batch_l"], shuffle=True, num_workers=0)
    unl = DataLoader(Dataset(data["unlabeled"] * 8, unl_tf), batch_size=size["batch_u"], shuffle=True, num_workers=0)

    torch.manual_seed(seed)
    method = CPS(VNet(out_channels=c, n_filters=size["n_filters"]), VNet(out_channels=c, n_filters=size["n_filters"]))
    method.set_unsup_weight(0.1)
    opts = [torch.optim.SGD(n.parameters(), lr=size["lr"], momentum=0.9, nesterov=True, weight_decay=3e-5)
            for n in method.networks().values()]  # fmt: skip
    policy = PrecisionPolicy("fp32") if config == "fp32" else PrecisionPolicy("bf16", channels_last=True)
    trainer = SemiSupervisedTrainer(
        "cpu", 1, lab, unl, method, opts, epoch_length=size["iterations"], decollate=False, precision=policy,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.run()
    train_s = time.perf_counter() - t0

    net = method.inference_network().eval()
    if config == "fp32":
        inferer = SlidingWindowInferer(size["roi"], sw_batch_size=1, overlap=0.5)
    else:
        inferer = PolicyInferer(size["roi"], precision=policy, sw_batch_size=2, overlap=0.5)
    eval_tf = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), window])
    per_class = {k: [] for k in range(1, c)}
    for item in data["test"]:
        d = eval_tf(item)
        with torch.no_grad():
            pred = inferer(d["image"][None].as_tensor(), net).argmax(1)[0].numpy()
        res = evaluate_case(pred, np.asarray(d["label"][0]).astype(np.int64), num_classes=c, include_hd95=False)
        for k in per_class:
            per_class[k].append(res[k]["dice"])
    dice = {k: round(float(np.mean(v)), 2) for k, v in per_class.items()}
    return {
        "kind": "parity",
        "config": config,
        "seed": seed,
        "train_s": round(train_s, 1),
        "final_loss": round(float(trainer.state.output["loss"]), 4),
        "dice": dice,
        "mean_dice": round(float(np.mean(list(dice.values()))), 2),
        "policy": trainer.precision.describe(),
    }


def run_parity(size: dict, seeds: list[int], quick: bool) -> dict:
    from scdl_monai.data.datasets import SYNAPSE
    from scdl_monai.data.phantom import generate_phantom

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = loadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        datalist = generate_phantom(
            tmp, num_cases=size["num_cases"], shape=size["shape"], seed=0, labeled_fraction=0.5, num_validation=0,
            num_test=2,
        )  # fmt: skip
        for seed in seeds:
            for config in ("fp32", "fast"):
                rows.append(_run_child({"kind": "parity", "config": config, "seed": seed, "size": size,
                                        "datalist": str(datalist)}))  # fmt: skip
    names = list(SYNAPSE.class_names)
    summary = {}
    for config in ("fp32", "fast"):
        sel = [r for r in rows if r["config"] == config]
        summary[config] = {
            "mean_dice": round(statistics.mean(r["mean_dice"] for r in sel), 2),
            "per_seed_mean_dice": [r["mean_dice"] for r in sel],
            "per_class_dice": {names[k] if k < len(names) else str(k): round(statistics.mean(r["dice"][str(k)]
                               if str(k) in r["dice"] else r["dice"][k] for r in sel), 2)
                               for k in range(1, 14)},  # fmt: skip
            "train_s": [r["train_s"] for r in sel],
        }
    diff = round(summary["fast"]["mean_dice"] - summary["fp32"]["mean_dice"], 2)
    return {
        "benchmark": "fastpath_parity",
        "quick": quick,
        "started": started,
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": loadavg(),
        "size": size,
        "seeds": seeds,
        "runs": rows,
        "summary": summary,
        "mean_dice_difference_fast_minus_fp32": diff,
        "within_1_point": bool(abs(diff) <= 1.0),
    }


def parity_markdown(res: dict) -> str:
    s = res["size"]
    lines = [
        f"## Fast path quality parity ({'QUICK smoke sizes' if res['quick'] else 'phantom'})",
        "",
        f"CPS, 2 VNets n_filters {s['n_filters']}, phantom {res['size']['num_cases']} cases of "
        f"{'x'.join(map(str, s['shape']))}, {s['iterations']} iterations of batch {s['batch_l']}+{s['batch_u']} "
        f"patches {'x'.join(map(str, s['patch']))}; seeds {res['seeds']}; Dice (%) on 2 held-out cases, "
        f"mean over seeds. Load average before {res['load_average_before']}, after {res['load_average_after']}.",
        "",
        "| class | fp32 | fast (bf16 + channels_last) |",
        "|---|---:|---:|",
    ]
    for name in res["summary"]["fp32"]["per_class_dice"]:
        lines.append(
            f"| {name} | {res['summary']['fp32']['per_class_dice'][name]:.2f} | "
            f"{res['summary']['fast']['per_class_dice'][name]:.2f} |"
        )
    lines += [
        f"| **mean** | **{res['summary']['fp32']['mean_dice']:.2f}** | **{res['summary']['fast']['mean_dice']:.2f}** |",
        "",
        f"Per-seed mean Dice: fp32 {res['summary']['fp32']['per_seed_mean_dice']}, fast "
        f"{res['summary']['fast']['per_seed_mean_dice']}; training seconds fp32 {res['summary']['fp32']['train_s']}, "
        f"fast {res['summary']['fast']['train_s']}. "
        f"Difference fast - fp32: {res['mean_dice_difference_fast_minus_fp32']} points "
        f"({'within' if res['within_1_point'] else 'NOT within'} 1 point).",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test; seconds)")
    parser.add_argument("--parity", action="store_true", help="quality parity on the phantom instead of speed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="parity seeds")
    parser.add_argument(
        "--configs",
        default=None,
        help=f"training configurations, from {sorted(TRAIN_CONFIGS)} (default all; quick: fp32,fast)",
    )
    parser.add_argument("--iters", type=int, default=None, help="measured training iterations per configuration")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up training iterations per configuration")
    parser.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time all configurations in one process, interleaved (default on; off with --quick)",
    )
    parser.add_argument("--infer-reps", type=int, default=None, help="timed volumes per inference path")
    parser.add_argument("--out", default=None, help="JSON output path (the .md goes next to it)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        spec = json.loads(args.child)
        if spec["kind"] == "train":
            row = train_child(spec["configs"], spec["size"])
        elif spec["kind"] == "infer":
            row = infer_child(spec["configs"], spec["size"], spec.get("argmax"))
        else:
            row = parity_child(spec["config"], spec["seed"], spec["size"], spec["datalist"])
        print(json.dumps(row))
        return 0

    if args.parity:
        size = dict(PARITY_QUICK if args.quick else PARITY_FULL)
        if args.iters is not None:
            size["iterations"] = args.iters
        res = run_parity(size, args.seeds, args.quick)
        md = parity_markdown(res)
        default_out = RESULTS / "fastpath_parity.json"
    else:
        default_configs = "fp32,fast" if args.quick else ",".join(TRAIN_CONFIGS)
        configs = [c.strip() for c in (args.configs or default_configs).split(",") if c.strip()]
        unknown = [c for c in configs if c not in TRAIN_CONFIGS]
        if unknown or not configs:
            parser.error(f"--configs: unknown {unknown or configs}, expected some of {sorted(TRAIN_CONFIGS)}")
        if "fp32" not in configs:
            configs.insert(0, "fp32")
        size = dict(QUICK if args.quick else FULL)
        for key, value in (("iters", args.iters), ("warmup", args.warmup), ("infer_reps", args.infer_reps)):
            if value is not None:
                if value < 1:
                    parser.error(f"--{key} must be >= 1, got {value}")
                size[key] = value
        interleave = not args.quick if args.interleave is None else args.interleave
        res = run_speed(size, configs, args.quick, interleave)
        md = speed_markdown(res)
        default_out = RESULTS / "fastpath.json"
    out = Path(args.out) if args.out else default_out
    atomic_write(out, json.dumps(res, indent=2) + "\n")
    atomic_write(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
