"""Speed and memory benchmark: every method ± SCDL (both SAC modes), one run.

What it measures, per configuration, on the **bundle configs users run** (composed and shrunk
exactly as in ``benchmarks/quality.py``: the phantom budget's patch size, ``n_filters``, batch and
overrides, but fp32 and without the budget's declared accuracy deviations ``dropout`` 0 and Kaiming
init, so each bundle keeps its own dropout):

* **training**: seconds per iteration of the config's own trainer
  (:class:`~scdl_monai.engines.trainer.SemiSupervisedTrainer` with its handlers), median over the
  iterations after warm-up, wall clock and process CPU time. One iteration = fetching the labeled
  batch from the config's ``CacheDataset`` pipeline (deterministic transforms cached, random crops
  / augmentation on the fly, ``num_workers`` 0 so that the cost is visible) + fetching the
  unlabeled batch + the method's step, backward and optimizer steps + the per-iteration handlers;
* **data-loading share**: (labeled + unlabeled batch fetch time) / iteration time (median of the
  per-iteration shares);
* **peak memory**: ``ru_maxrss`` of the process (one subprocess per configuration, so peaks do not
  mix), after inference (before any training step) and after training, plus the training step's
  working set (peak minus the resident set just before the first iteration);
* **inference**: the config's ``inference_network`` (eval mode; for SCDL with the prior path the
  config enables) through its ``validate#inferer`` (sliding window with the training patch,
  overlap 0.5) on one whole phantom volume (:func:`scdl_monai.data.phantom.phantom_case`), voxels/s
  (median of repeats after a one-window warm-up);
* **fast path** (``--fast-path``): each configuration without SCDL also as ``<config>@fast`` with
  the bundle keys ``precision`` bf16 and ``channels_last`` true (docs/performance.md), right after its fp32
  run; the table gives the ratios (training time, inference throughput, peak memory) and the
  precision the policy actually used (fp32 where the CPU lacks bf16: the fallback is logged);
* **SCDL overhead**: each ``<method>+scdl[<sac mode>]`` relative to ``<method>`` (time, CPU time,
  step working set, inference throughput), SAC modes ``feature_pool`` and ``masked_image``.

Configurations run one after another in this one invocation, each in its own subprocess with
``--threads`` torch threads (default 1), baseline and its SCDL variants next to each other; the
machine (CPU model, ISA flags, torch/MONAI versions, threads) and the load average before and after
are recorded. On a shared machine wall times are noisy; process CPU seconds are the steadier figure.

Outputs: Markdown on stdout and in ``benchmarks/results/speed.md``, JSON in ``speed.json``.
``--quick``: tiny sizes and a subset of configurations (CI smoke test; numbers meaningless).
Examples::

    python benchmarks/speed.py                   # all configurations, ~8 min on 2 cores
    python benchmarks/speed.py --quick --out /tmp/speed
    python benchmarks/speed.py --configs cps cps+scdl[masked_image] --iters 10
    python benchmarks/speed.py --fast-path       # + each method in bf16 + channels_last
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import atomic_write, child_main, loadavg, machine_info, peak_rss_mib, rss_mib, run_child
from quality import BUDGETS, SSL_METHODS, compose, config_label, make_phantom, overrides_for

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAC_MODES = ("feature_pool", "masked_image")
DEFAULT_CONFIGS = ("supervised",) + tuple(
    c for m in SSL_METHODS for c in (m, *(f"{m}+scdl[{mode}]" for mode in SAC_MODES))
)
QUICK_CONFIGS = ("supervised", "cps", "cps+scdl[feature_pool]", "cps+scdl[masked_image]")

#: Training sizes are the quality benchmark's (phantom budget, quick budget for ``--quick``), in fp32
#: and with each bundle's own dropout and init (the phantom budget's declared deviations are accuracy
#: choices); the data set is smaller (only loaders need it).
_DEVIATIONS = ("dropout", "default_init")
FULL = {**{k: v for k, v in BUDGETS["phantom"].items() if k not in _DEVIATIONS}, "precision": "fp32",
        "channels_last": False, "num_cases": 7, "num_test": 1, "num_validation": 1, "labeled_fraction": 0.4,
        "warmup": 2, "iters": 5, "volume": (96, 96, 64), "infer_reps": 2, "timeout_s": 600}  # fmt: skip
QUICK = {**BUDGETS["quick"], "num_cases": 5, "num_test": 1, "num_validation": 1, "labeled_fraction": 0.4,
         "warmup": 1, "iters": 1, "volume": (48, 48, 48), "infer_reps": 1, "timeout_s": 300}  # fmt: skip


#: Suffix of a configuration run with the fast path (docs/performance.md): ``precision`` bf16 and
#: ``channels_last`` true, the two bundle keys of ``scdl_monai.engines.precision.PrecisionPolicy``.
FAST = "@fast"


def split_fast(name: str) -> tuple[str, bool]:
    """``"cps@fast"`` -> ``("cps", True)``; ``"cps"`` -> ``("cps", False)``."""
    return (name[: -len(FAST)], True) if name.endswith(FAST) else (name, False)


def parse_config(name: str) -> tuple[str, str | None]:
    """``"cps+scdl[masked_image]"`` -> ``("cps", "masked_image")``; ``"cps"`` -> ``("cps", None)``.

    A trailing ``@fast`` (fast-path run) is ignored here (see :func:`split_fast`).
    """
    base, _, suffix = split_fast(name)[0].partition("+")
    if not suffix:
        return base, None
    mode = suffix[len("scdl[") : -1] if suffix.startswith("scdl[") and suffix.endswith("]") else None
    if mode not in SAC_MODES:
        raise ValueError(f"configuration {name!r}: expected <method> or <method>+scdl[<{'|'.join(SAC_MODES)}>].")
    return base, mode


# ------------------------------------------------------------------------------------ child
def measure(spec: dict) -> dict:
    """Build one configuration from its bundle config, time inference then training iterations."""
    import numpy as np
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from scdl_monai.data.phantom import phantom_case

    torch.set_num_threads(spec["threads"])
    logging.disable(logging.INFO)
    size = spec["size"]
    method, sac_mode = parse_config(spec["config"])
    root = Path(spec["run_dir"])
    root.mkdir(parents=True, exist_ok=True)
    config = compose(method, sac_mode is not None, "synapse", "native")
    (root / "train.json").write_text(json.dumps(config))
    n_total = size["warmup"] + size["iters"]
    budget = {**size, "iterations": n_total, "epoch_length": n_total}
    overrides = overrides_for(method, sac_mode is not None, {**spec, "size": budget}, config)
    wf = ConfigWorkflow(config_file=str(root / "train.json"), workflow_type="train",
                        meta_file=spec["meta_file"], **overrides)  # fmt: skip
    wf.initialize()
    parser = wf.parser
    trainer = parser.get_parsed_content("train#trainer")
    method_obj = parser.get_parsed_content("method")

    # inference first: its peak RSS is then not hidden by the training peak
    network = parser.get_parsed_content("inference_network").eval()
    inferer = parser.get_parsed_content("validate#inferer")
    image, _ = phantom_case(size["volume"], seed=(0, 0))
    volume = torch.from_numpy(np.clip((image.astype(np.float32) + 125.0) / 400.0, 0.0, 1.0))[None, None]
    patch = [int(p) for p in parser.get_parsed_content("patch_size")]
    rss_before_infer = rss_mib()
    infer_s, infer_cpu = [], []
    with torch.no_grad():
        inferer(volume[..., : patch[0], : patch[1], : patch[2]], network)  # one-window warm-up
        for _ in range(size["infer_reps"]):
            t, c = time.perf_counter(), time.process_time()
            out = inferer(volume, network)
            infer_s.append(time.perf_counter() - t)
            infer_cpu.append(time.process_time() - c)
    assert out.shape[2:] == volume.shape[2:]
    peak_after_infer = peak_rss_mib()
    network.train()
    del out

    # training: time every iteration from the batch fetch to the last per-iteration handler
    marks: dict = {"fetch": 0.0}
    rows: list[dict] = []

    def get_started(_):
        marks.update(t0=time.perf_counter(), c0=time.process_time(), fetch=0.0, g0=time.perf_counter())

    def get_completed(_):
        marks["fetch"] += time.perf_counter() - marks["g0"]

    next_unlabeled = trainer.next_unlabeled_batch

    def timed_next_unlabeled():
        t = time.perf_counter()
        batch = next_unlabeled()
        marks["fetch"] += time.perf_counter() - t
        return batch

    trainer.next_unlabeled_batch = timed_next_unlabeled

    def completed(_):
        wall = time.perf_counter() - marks["t0"]
        rows.append({"wall": wall, "cpu": time.process_time() - marks["c0"], "fetch": marks["fetch"]})

    trainer.add_event_handler(Events.GET_BATCH_STARTED, get_started)
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, get_completed)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, completed)
    rss_before_train = rss_mib()
    wf.run()
    output = trainer.state.output
    output = output[0] if isinstance(output, list) else output
    measured = rows[size["warmup"] :]
    wall = [r["wall"] for r in measured]
    cpu = [r["cpu"] for r in measured]
    share = [r["fetch"] / r["wall"] for r in measured]
    voxels = int(np.prod(volume.shape[2:]))
    result = {
        "config": spec["config"],
        "status": "ok",
        "method_class": type(method_obj).__name__,
        "params": int(sum(p.numel() for p in method_obj.parameters())),
        "iterations": len(rows),
        "median_s": round(statistics.median(wall), 4),
        "min_s": round(min(wall), 4),
        "median_cpu_s": round(statistics.median(cpu), 4),
        "data_share": round(statistics.median(share), 4),
        "median_fetch_s": round(statistics.median(r["fetch"] for r in measured), 4),
        "times_s": [round(x, 4) for x in wall],
        "final_loss": round(float(output["loss"]), 5),
        "infer_s": round(statistics.median(infer_s), 3),
        "infer_cpu_s": round(statistics.median(infer_cpu), 3),
        "infer_voxels": voxels,
        "voxels_per_s": round(voxels / statistics.median(infer_s)),
        "infer_peak_rss_mib": round(peak_after_infer, 1),
        "infer_working_set_mib": round(peak_after_infer - rss_before_infer, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "step_working_set_mib": round(peak_rss_mib() - rss_before_train, 1),
        "threads": torch.get_num_threads(),
        "precision": trainer.precision.describe() if hasattr(trainer, "precision") else None,
    }
    wf.finalize()
    return result


# ------------------------------------------------------------------------------------ report
def _pairs(rows: dict, reference_of) -> list[tuple[str, dict, dict]]:
    """``(name, row, reference row)`` for every successful row whose reference (``reference_of(name)``,
    ``None`` for rows without one) also succeeded."""
    out = []
    for name, row in rows.items():
        ref = rows.get(reference_of(name) or "")
        if row["status"] == "ok" and ref and ref["status"] == "ok":
            out.append((name, row, ref))
    return out


def overheads(rows: dict) -> list[dict]:
    """SCDL variants relative to their baseline (ratios of medians)."""
    def baseline(name: str) -> str | None:
        base, mode = parse_config(name)
        return None if split_fast(name)[1] or mode is None else base

    out = []
    for name, row, ref in _pairs(rows, baseline):
        base, mode = parse_config(name)
        out.append({
            "config": name, "baseline": base, "sac_mode": mode,
            "time_x": round(row["median_s"] / ref["median_s"], 3),
            "cpu_time_x": round(row["median_cpu_s"] / ref["median_cpu_s"], 3),
            "step_memory_x": round(row["step_working_set_mib"] / max(ref["step_working_set_mib"], 1e-9), 3),
            "peak_rss_x": round(row["peak_rss_mib"] / ref["peak_rss_mib"], 3),
            "inference_time_x": round(ref["voxels_per_s"] / row["voxels_per_s"], 3),
        })  # fmt: skip
    return out


def fast_paths(rows: dict) -> list[dict]:
    """Fast path (bf16 + channels_last) relative to the same configuration in fp32 (ratios of medians)."""
    out = []
    for name, row, ref in _pairs(rows, lambda n: split_fast(n)[0] if split_fast(n)[1] else None):
        plain = split_fast(name)[0]
        out.append({
            "config": plain, "fp32_s": ref["median_s"], "fast_s": row["median_s"],
            "time_x": round(row["median_s"] / ref["median_s"], 3),
            "cpu_time_x": round(row["median_cpu_s"] / ref["median_cpu_s"], 3),
            "fp32_voxels_per_s": ref["voxels_per_s"], "fast_voxels_per_s": row["voxels_per_s"],
            "inference_speedup": round(row["voxels_per_s"] / ref["voxels_per_s"], 3),
            "peak_rss_x": round(row["peak_rss_mib"] / ref["peak_rss_mib"], 3),
            "effective_precision": (row.get("precision") or {}).get("precision"),
        })  # fmt: skip
    return out


def label(name: str) -> str:
    plain, fast = split_fast(name)
    base, mode = parse_config(plain)
    return config_label(base) + (f" + SCDL ({mode})" if mode else "") + (" [bf16 + channels_last]" if fast else "")


def markdown(res: dict) -> str:
    m, s = res["machine"], res["size"]
    lines = [
        f"## Speed and memory ({'QUICK smoke sizes, numbers meaningless' if res['quick'] else 'benchmark size'})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, ISA flags {', '.join(m['isa']) or 'none of ' + 'avx512/amx'}, "
        f"torch {m['torch']} ({m['cpu_capability']}), MONAI {m['monai']}, Python {m['python']}; "
        f"{res['threads']} torch thread(s) per configuration, one subprocess per configuration, run one after another. "
        f"Started {res['started']}, {res['wall_s'] / 60:.1f} min; load average (1/5/15 min) before "
        f"{res['load_average_before']}, after {res['load_average_after']} (the 2 cores are shared with other jobs: "
        "wall times are noisy, CPU seconds are the steadier figure).",
        "",
        f"Training: the bundle config's trainer, batch {s['batch']} labeled (+ {s['batch']} unlabeled) patches of "
        f"{s['patch']}^3, n_filters {s['n_filters']}, 14 classes, fp32; median of {s['iters']} iterations after "
        f"{s['warmup']} warm-up; data from the config's CacheDataset (cache_rate 1, num_workers 0); SCDL terms on "
        "from the first iteration (scdl_warmup_iters 1). Inference: the config's inference network and sliding-window "
        f"inferer (patch {s['patch']}^3, overlap 0.5) on one {'x'.join(map(str, s['volume']))} phantom volume, "
        f"median of {s['infer_reps']} after a one-window warm-up.",
        "",
        "| configuration | params | s/it (median) | min | CPU s/it | data loading share | peak RSS MiB "
        "| step working set MiB | inference voxels/s | inference peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in res["rows"].items():
        if r["status"] != "ok":
            lines.append(f"| {label(name)} | FAILED: {r['error'].replace('|', '/')} | | | | | | | | |")
            continue
        lines.append(
            f"| {label(name)} | {r['params']:,} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['median_cpu_s']:.3f} | "
            f"{100 * r['data_share']:.1f}% | {r['peak_rss_mib']:.0f} | {r['step_working_set_mib']:.0f} | "
            f"{r['voxels_per_s']:,} | {r['infer_peak_rss_mib']:.0f} |"
        )
    lines += ["", "SCDL overhead (ratio to the same method without SCDL, same run):", "",
              "| configuration | time x | CPU time x | step working set x | peak RSS x | inference time x |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for o in res["overheads"]:
        lines.append(
            f"| {label(o['config'])} | {o['time_x']:.2f} | {o['cpu_time_x']:.2f} | {o['step_memory_x']:.2f} | "
            f"{o['peak_rss_x']:.2f} | {o['inference_time_x']:.2f} |"
        )
    if res.get("fast_paths"):
        lines += ["", "Fast path (`--precision bf16 --channels_last true`, docs/performance.md) vs the same configuration "
                  "in fp32, same run:", "",
                  "| configuration | fp32 s/it | fast s/it | time x | CPU time x | fp32 inference voxels/s "
                  "| fast inference voxels/s | inference speed-up | peak RSS x | effective precision |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for f in res["fast_paths"]:
            lines.append(
                f"| {label(f['config'])} | {f['fp32_s']:.3f} | {f['fast_s']:.3f} | {f['time_x']:.2f} | "
                f"{f['cpu_time_x']:.2f} | {f['fp32_voxels_per_s']:,} | {f['fast_voxels_per_s']:,} | "
                f"{f['inference_speedup']:.2f}x | {f['peak_rss_x']:.2f} | {f['effective_precision']} |"
            )
    high = [f"{label(n)} {100 * r['data_share']:.1f}%" for n, r in res["rows"].items()
            if r["status"] == "ok" and r["data_share"] >= 0.05]  # fmt: skip
    lines += [
        "",
        "Data-loading share >= 5%: " + ("; ".join(high) if high else "none") + ".",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 4 configurations (CI smoke test)")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="default: supervised and every SSL method, + scdl[feature_pool], + scdl[masked_image]")  # fmt: skip
    parser.add_argument("--iters", type=int, default=None, help="measured training iterations")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up training iterations")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per configuration")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (speed.{md,json})")
    parser.add_argument("--fast-path", action="store_true",
                        help="also run every configuration without SCDL as <config>@fast (bf16 + channels_last)")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(measure, args.child, ("config",))

    size = dict(QUICK if args.quick else FULL)
    for key, value in (("iters", args.iters), ("warmup", args.warmup)):
        if value is not None:
            if value < (1 if key == "iters" else 0):
                parser.error(f"--{key} must be >= {1 if key == 'iters' else 0}, got {value}")
            size[key] = value
    configs = list(args.configs or (QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS))
    if args.fast_path:  # each fast-path run right after its fp32 run (side by side)
        configs = [c for name in configs for c in ([name, name + FAST] if parse_config(name)[1] is None
                                                   and not split_fast(name)[1] else [name])]  # fmt: skip
    for c in configs:
        try:
            parse_config(c)
        except ValueError as err:
            parser.error(f"--configs: {err}")
    started, t0, load_before = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter(), loadavg()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="speed_") as work:
        from scdl_monai.bundles import build_metadata

        data_dir = Path(work) / "phantom"
        data_dir.mkdir()
        datalist = make_phantom(data_dir, size)["datalist"]
        meta_file = Path(work) / "metadata.json"
        meta_file.write_text(json.dumps(build_metadata("supervised", "synapse")))
        for name in configs:
            mode, fast = parse_config(name)[1], split_fast(name)[1]
            extra = {"scdl_sac_mode": mode, "scdl_warmup_iters": 1} if mode else {}
            spec = {"config": name, "size": size, "budget": "quick" if args.quick else "phantom", "seed": 0,
                    "device": "cpu", "threads": args.threads, "dataset_dir": str(Path(datalist).parent),
                    "datalist": datalist, "meta_file": str(meta_file), "run_dir": str(Path(work) / "runs" / name),
                    # SCDL terms fully on from the start; the fast path = the bundle keys precision + channels_last
                    "extra_overrides": extra, "precision": "bf16" if fast else size["precision"],
                    "channels_last": fast or size["channels_last"]}  # fmt: skip
            rows[name] = run_child(__file__, spec, ("config",), size["timeout_s"], args.threads)
            rows[name].pop("stderr_tail", None)
            r = rows[name]
            msg = (f"{r['median_s']:.3f} s/it (CPU {r['median_cpu_s']:.3f}), data {100 * r['data_share']:.1f}%, "
                   f"peak {r['peak_rss_mib']:.0f} MiB, {r['voxels_per_s']:,} vox/s" if r["status"] == "ok"
                   else f"ERROR {r['error']}")  # fmt: skip
            print(f"[{(time.perf_counter() - t0) / 60:4.1f} min] {name:<32} {msg}", flush=True)
    res = {
        "benchmark": "speed", "quick": args.quick, "started": started, "wall_s": round(time.perf_counter() - t0, 1),
        "load_average_before": load_before, "load_average_after": loadavg(), "machine": machine_info(),
        "threads": args.threads, "size": size, "rows": rows, "overheads": overheads(rows), "fast_paths": fast_paths(rows),
    }  # fmt: skip
    md = markdown(res)
    out = Path(args.out)
    atomic_write(out / "speed.json", json.dumps(res, indent=1) + "\n")
    atomic_write(out / "speed.md", md)
    print(md)
    print(f"wrote {out}/speed.{{md,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
