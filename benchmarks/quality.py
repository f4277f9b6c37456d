"""Quality benchmark (GitHub issue 8): every method, with and without SCDL, on the imbalanced phantom.

What it measures: the **bundle configs users run** (:func:`scdl_monai.bundles.compose_config`,
``kind="train"``, dataset ``synapse``, VNet backbone, native protocol; ``scdl=True`` adds the SCDL
overlay) executed in-process by :class:`monai.bundle.ConfigWorkflow`, one subprocess per
(configuration, seed), with overrides that shrink them to one fixed CPU budget:

* data: :func:`scdl_monai.data.phantom.generate_phantom`, 15 cases of 64×64×48 voxels at
  1.5×1.5×2 mm (13 organs, liver : adrenal ≥ 500 : 1 in every case), phantom seed 0, fixed split:
  4 test, 1 validation (unused), 10 training of which 2 labeled (20%) and 8 unlabeled;
  the fully supervised upper bound uses the labels of all 10;
* budget, identical for every method: 64 optimizer iterations of batch 2 labeled
  (+ 2 unlabeled for SSL methods) random 48³ patches (class-balanced crops for labeled cases, the
  base config's ``RandCropByLabelClassesd``), VNet-family networks with ``n_filters`` 8, fp32,
  each method's own optimizer / learning rate / losses from its config;
* every configuration uses the native preprocessing protocol (one data grid for all; the GA and
  DHC protocols resize to 160×160×80, larger than the phantom);
* schedules that span a whole run are stretched to the budget, keeping their shape: epoch-level poly
  LR and unsupervised-weight ramps (``max_epochs``); GA-CPS / MagicNet ``max_iterations`` = budget,
  ``poly_iterations`` scaled alike (GA-MagicNet: poly over 70/17 budgets, stopped after one) and
  MagicNet's ``rampup_interval`` (350 of 70,000 or 17,000); SCDL's warm-up is already a fraction
  of the run (``scdl_warmup_fraction``); other iteration constants (MagicNet ``blend_after`` 100,
  ``recount_interval`` 20) are kept;
* deviations forced by the tiny size (stated in the output): MagicNet cubes 16³ (3×3×3 grid of the
  48³ patch) with batch norm instead of instance norm (a 16³ cube has one bottleneck voxel) and a
  location head of width 256 (4096 in the config, sized for n_filters 16);
* no validation / model selection: the network after the last iteration is evaluated;
* evaluation: the config's ``inference_network`` with its ``validate#inferer`` (sliding window with
  the training patch, overlap 0.5) on the 4 test volumes preprocessed by ``validate#preprocessing``;
  per-class Dice (%) and symmetric ASD (mm) from :func:`scdl_monai.evaluation.metrics.evaluate_case`
  (project mode: a missed organ scores Dice 0 and ASD = the image diagonal in mm); per run the class
  means over cases, then mean ± std (population) over seeds
  (:func:`scdl_monai.evaluation.tables.combine_runs`).

A configuration that fails (cannot be composed, crashes, runs out of time) gets a table row with
its error, never silently dropped. Outputs (written atomically): ``quality.md`` (paper layout:
Avg Dice, Avg ASD, per-organ Dice; plus the budget and per-run wall times), ``quality.csv`` (one
row per configuration: means and stds of every column), ``quality.png`` (per-class Dice bars, one
colour per configuration) and ``quality.json`` (every run's per-class numbers).

``--quick`` is a CI smoke test (tiny phantom, 2 iterations, n_filters 4; numbers meaningless).
Examples::

    python benchmarks/quality.py                       # default budget, ~40 min on 2 idle cores
    python benchmarks/quality.py --quick --out /tmp/q  # seconds to a minute
    python benchmarks/quality.py --configs cps cps+scdl --seeds 0 --out /tmp/q
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import atomic_write, child_main, loadavg, machine_info, run_child

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: Semi-supervised baselines, each run without and with SCDL.
SSL_METHODS = ("cps", "dhc", "ga_cps", "ga_magicnet", "genericssl")
#: Configuration names: the two supervised references, then every SSL method ± SCDL.
SUPERVISED = ("supervised", "fully_supervised")
DEFAULT_CONFIGS = SUPERVISED + tuple(f"{m}{s}" for m in SSL_METHODS for s in ("", "+scdl"))
LABELS = {
    "supervised": "Supervised (20% labeled only)",
    "fully_supervised": "Fully supervised (100%, upper bound)",
    "cps": "CPS",
    "dhc": "DHC",
    "ga_cps": "GA-CPS",
    "ga_magicnet": "GA-MagicNet",
    "magicnet": "MagicNet",
    "genericssl": "GenericSSL (A&D)",
}

#: The fixed budget of the default run and of ``--quick``.
FULL = {
    "num_cases": 15, "shape": (64, 64, 48), "num_test": 4, "num_validation": 1, "labeled_fraction": 0.2,
    "patch": 48, "n_filters": 8, "iterations": 64, "epoch_length": 4, "batch": 2, "timeout_s": 900,
}  # fmt: skip
QUICK = {
    "num_cases": 7, "shape": (48, 48, 48), "num_test": 1, "num_validation": 1, "labeled_fraction": 0.2,
    "patch": 48, "n_filters": 4, "iterations": 2, "epoch_length": 1, "batch": 1, "timeout_s": 300,
}  # fmt: skip


def parse_config(name: str) -> tuple[str, bool, bool]:
    """``"cps+scdl"`` -> (bundle method, scdl, all labels)."""
    base, _, suffix = name.partition("+")
    if suffix not in ("", "scdl"):
        raise ValueError(f"configuration {name!r}: only the '+scdl' suffix is known.")
    if base == "fully_supervised":
        return "supervised", False, True
    return base, suffix == "scdl", False


def config_label(name: str) -> str:
    base, scdl, _ = parse_config(name) if not name.startswith("fully") else ("fully_supervised", False, True)
    return LABELS.get(base, base) + (" + SCDL" if scdl else "")


def overrides_for(
    method: str, scdl: bool, size: dict, seed: int, data_dir: str, datalist: str, root: str, config: dict
) -> dict:
    """Config overrides that shrink a composed bundle config to the benchmark budget (module docstring).

    Iteration-denominated schedules keep their shape relative to the config's run length
    ``max_iterations`` (GA-CPS / MagicNet: 17,000 or 70,000): GA-MagicNet's poly over 70k stopped
    at 17k stays poly over 70/17 budgets; MagicNet's 200-step consistency ramp of ``rampup_interval``
    350 iterations keeps covering the same fraction of the run; SCDL's 1000 warm-up iterations are
    taken as a fraction of GA's 17,000.
    """
    n_iter, epoch = size["iterations"], size["epoch_length"]
    patch = [size["patch"]] * 3
    out = {
        "bundle_root": root, "dataset_dir": data_dir, "datalist": datalist, "seed": seed,
        "device": "$torch.device('cpu')", "amp": False, "num_workers": 0, "cache_rate": 1.0,
        "n_filters": size["n_filters"], "patch_size": patch,
        "batch_size": size["batch"], "unlabeled_batch_size": size["batch"],
        "val_interval": 10**9, "checkpoint_saver": None, "resume_from": "",
        "train#trainer#epoch_length": epoch, "train#trainer#max_epochs": max(1, n_iter // epoch),
    }  # fmt: skip
    if "max_iterations" in config:  # GA-CPS, MagicNet family
        scale = n_iter / float(config["max_iterations"])
        out.update(max_iterations=n_iter, iterations_per_epoch=epoch)
        if "poly_iterations" in config:
            out["poly_iterations"] = max(1, round(float(config["poly_iterations"]) * scale))
    if "magicnet" in method:
        interval = float(config.get("method_def", {}).get("rampup_interval", 350))
        out.update({
            "cube_size": size["patch"] // 3, "location_hidden_features": 256, "network_def#norm": "batch",
            "method_def#rampup_interval": max(1, round(interval * n_iter / float(config["max_iterations"]))),
        })  # fmt: skip
    return out


def compose(method: str, scdl: bool) -> dict:
    """The train config users get (``compose_config``), native protocol for every method (one data grid)."""
    from scdl_monai.bundles import compose_config

    return compose_config("train", method, "synapse", protocol="native", scdl=scdl)


# ------------------------------------------------------------------------------------ one run
def run_one(spec: dict) -> dict:
    """Train one configuration for one seed from its bundle config and evaluate the test cases."""
    import numpy as np
    import torch
    from monai.bundle import ConfigWorkflow

    from scdl_monai.evaluation.metrics import evaluate_case
    from scdl_monai.evaluation.tables import case_rows_for, summarize_cases

    torch.set_num_threads(spec["threads"])
    logging.disable(logging.INFO)  # StatsHandler prints every iteration otherwise
    method, scdl, full_labels = parse_config(spec["config"])
    root = Path(spec["run_dir"])
    root.mkdir(parents=True, exist_ok=True)
    row = {"config": spec["config"], "seed": spec["seed"]}
    t0 = time.perf_counter()
    config = compose(method, scdl)
    (root / "train.json").write_text(json.dumps(config))
    data_dir = spec["data_dir"]
    datalist = str(Path(data_dir) / ("datalist_full.json" if full_labels else "datalist.json"))
    overrides = overrides_for(method, scdl, spec["size"], spec["seed"], data_dir, datalist, str(root), config)
    wf = ConfigWorkflow(config_file=str(root / "train.json"), workflow_type="train",
                        meta_file=spec["meta_file"], **overrides)  # fmt: skip
    wf.initialize()
    parser = wf.parser
    trainer = parser.get_parsed_content("train#trainer")
    t_train = time.perf_counter()
    wf.run()
    train_s = time.perf_counter() - t_train
    row["iterations"] = int(trainer.state.iteration)
    out = trainer.state.output
    out = out[0] if isinstance(out, list) else out
    row["final_loss"] = float(out["loss"])
    row["final_loss_finite"] = bool(math.isfinite(row["final_loss"]))

    t_eval = time.perf_counter()
    network = parser.get_parsed_content("inference_network").eval()
    preprocess = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    num_classes = int(parser.get_parsed_content("num_classes"))
    names = list(parser.get_parsed_content("class_names"))[1:]
    spacing = [float(s) for s in parser.get_parsed_content("pixdim")]
    cases = []
    test = json.loads(Path(datalist).read_text())["test"]
    with torch.no_grad():
        for item in test:
            d = preprocess(dict(item))
            image = d["image"].as_tensor() if hasattr(d["image"], "as_tensor") else d["image"]
            pred = inferer(image[None].float(), network).argmax(1)[0]
            label = np.asarray(d["label"][0]).astype(np.int64)
            result = evaluate_case(pred.numpy(), label, num_classes, spacing=spacing, include_hd95=False)
            cases += case_rows_for(item["case_id"], result, names, "project")
    summary = summarize_cases(cases)
    wf.finalize()
    row.update(
        status="ok",
        train_s=round(train_s, 1),
        eval_s=round(time.perf_counter() - t_eval, 1),
        total_s=round(time.perf_counter() - t0, 1),
        s_per_iter=round(train_s / max(1, row["iterations"]), 3),
        summary=summary,
    )
    return row


def _child(spec: dict) -> dict:
    """Run one (configuration, seed) in a subprocess; a crash or time-out becomes an error row."""
    result = Path(spec["run_dir"]) / "result.json"
    if spec.get("reuse") and result.is_file():
        return {**json.loads(result.read_text()), "reused": True}
    if spec.get("reuse_only"):
        return {"config": spec["config"], "seed": spec["seed"], "status": "error", "error": "not run (stopped early)"}
    t0 = time.perf_counter()
    row = run_child(__file__, spec, ("config", "seed"), spec["size"]["timeout_s"], spec["threads"])
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
    if row["status"] == "ok":
        result.write_text(json.dumps(row))
    elif "stderr_tail" in row:
        (Path(spec["run_dir"]) / "stderr.txt").write_text(row.pop("stderr_tail"))
    return row


# ------------------------------------------------------------------------------------ data
def make_data(data_dir: Path, size: dict) -> dict:
    """Phantom + the datalists (20% labeled; all labels for the upper bound) + the metadata file."""
    from scdl_monai.data.phantom import class_voxel_shares, generate_phantom

    path = generate_phantom(
        data_dir, num_cases=size["num_cases"], shape=size["shape"], seed=0,
        labeled_fraction=size["labeled_fraction"], num_validation=size["num_validation"], num_test=size["num_test"],
    )  # fmt: skip
    datalist = json.loads(path.read_text())
    full = dict(datalist)
    labels_of = {Path(e["image"]).name: e["image"].replace("/images/", "/labels/") for e in datalist["unlabeled"]}
    full["training"] = datalist["training"] + [
        {"image": e["image"], "label": labels_of[Path(e["image"]).name], "case_id": e["case_id"]}
        for e in datalist["unlabeled"]
    ]
    (data_dir / "datalist_full.json").write_text(json.dumps(full, indent=2))
    from scdl_monai.bundles import build_metadata

    (data_dir / "metadata.json").write_text(json.dumps(build_metadata("supervised", "synapse")))
    train_labels = [e["label"] for e in datalist["training"]]
    all_labels = [e["label"] for e in full["training"] + datalist["test"]]
    return {
        "split": {k: [e["case_id"] for e in datalist[k]] for k in ("training", "unlabeled", "validation", "test")},
        "labeled_largest_to_smallest": round(class_voxel_shares(train_labels)["largest_to_smallest"], 1),
        "all_largest_to_smallest": round(class_voxel_shares(all_labels)["largest_to_smallest"], 1),
    }


# ------------------------------------------------------------------------------------ tables
def aggregate(rows: list[dict], configs: list[str]) -> list[dict]:
    """One entry per configuration: combined (over seeds) summary or the errors."""
    from scdl_monai.evaluation.tables import combine_runs

    out = []
    for config in configs:
        runs = [r for r in rows if r["config"] == config]
        ok = [r for r in runs if r["status"] == "ok"]
        errors = sorted({f"seed {r['seed']}: {r['error']}" for r in runs if r["status"] != "ok"})
        entry = {"config": config, "label": config_label(config), "seeds_ok": [r["seed"] for r in ok],
                 "errors": errors, "combined": None}  # fmt: skip
        if ok:
            entry["combined"] = combine_runs([r["summary"] for r in ok], [f"seed {r['seed']}" for r in ok])
            entry["s_per_iter"] = statistics.median(r["s_per_iter"] for r in ok)
            entry["train_s"] = [r["train_s"] for r in ok]
        out.append(entry)
    return out


def _cell(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std``; just the mean when the std is NaN (``std`` NaN is passed for a single seed)."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def class_names_of(table: list[dict]) -> list[str]:
    for entry in table:
        if entry["combined"]:
            return [str(r["class_name"]) for r in entry["combined"] if str(r["class_index"]) != "avg"]
    from scdl_monai.data.datasets import SYNAPSE

    return list(SYNAPSE.class_names)[1:]


def markdown(res: dict) -> str:
    table, s = res["table"], res["size"]
    names = class_names_of(table)
    lines = [
        f"## Quality benchmark on the imbalanced phantom ({'QUICK smoke sizes, numbers meaningless' if res['quick'] else 'default budget'})",
        "",
        f"Data: phantom seed 0, {s['num_cases']} cases of {'x'.join(map(str, s['shape']))} voxels (1.5x1.5x2 mm); "
        f"split {len(res['data']['split']['training'])} labeled + {len(res['data']['split']['unlabeled'])} unlabeled "
        f"training cases ({round(100 * s['labeled_fraction'])}% labeled), {len(res['data']['split']['test'])} test cases "
        f"({', '.join(res['data']['split']['test'])}); largest:smallest organ voxel ratio "
        f"{res['data']['all_largest_to_smallest']}:1 over all cases.",
        "",
        f"Budget (every method): {s['iterations']} iterations, batch {s['batch']} labeled (+ {s['batch']} unlabeled) "
        f"patches of {s['patch']}^3, n_filters {s['n_filters']}, fp32, CPU, {res['threads']} thread(s) per run, "
        f"{res['jobs']} run(s) in parallel; bundle configs composed by `scdl_monai.bundles.compose_config` with the "
        "overrides listed in `benchmarks/quality.py`; last-iteration network, no model selection. "
        f"Seeds {res['seeds']}; cells are mean ± std (population) over seeds of the per-run class means over the "
        "test cases. Dice in %, ASD = symmetric average surface distance in mm (a missed organ counts Dice 0, "
        "ASD = image diagonal).",
        "",
        "| Method | Avg Dice | Avg ASD (mm) | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for entry in table:
        label = entry["label"]
        if entry["combined"] is None:
            lines.append(f"| {label} | FAILED | | " + " | ".join("" for _ in names) + " |")
            continue
        rows = entry["combined"]
        avg = next(r for r in rows if str(r["class_index"]) == "avg")
        per_class = [r for r in rows if str(r["class_index"]) != "avg"]
        nan = math.nan
        one = len(entry["seeds_ok"]) == 1  # no spread over a single seed
        lines.append(
            f"| {label}{' (1 seed)' if one and len(res['seeds']) > 1 else ''} | "
            f"{_cell(avg['dice_mean'], nan if one else avg['dice_std'])} | "
            f"{_cell(avg['asd_mean'], nan if one else avg['asd_std'])} | "
            + " | ".join(_cell(r["dice_mean"], nan if one else r["dice_std"], 1) for r in per_class)
            + " |"
        )
    lines += ["", "| Method | seeds ok | s/iteration (median over seeds) | training s per seed | errors |",
              "|---|---|---:|---|---|"]  # fmt: skip
    for entry in table:
        errs = "; ".join(entry["errors"]).replace("|", "/") or "-"
        spi = f"{entry['s_per_iter']:.2f}" if "s_per_iter" in entry else "-"
        lines.append(f"| {entry['label']} | {entry['seeds_ok']} | {spi} | {entry.get('train_s', '-')} | {errs} |")
    lines += [
        "",
        f"Started {res['started']}, wall time {res['wall_s'] / 60:.1f} min"
        + (f" (this invocation tabulated {res['reused']} runs finished by an earlier one)" if res.get("reused") else "")
        + f"; sum of per-run wall times {sum(r.get('wall_s', 0) for r in res['runs']) / 60:.1f} min; load average before "
        f"{res['load_average_before']}, after {res['load_average_after']}; {res['machine']['cpu']}, "
        f"torch {res['machine']['torch']}, MONAI {res['machine']['monai']}.",
        "",
    ]
    return "\n".join(lines)


CSV_STATS = ("dice", "asd")


def csv_rows(table: list[dict]) -> tuple[list[dict], list[str]]:
    names = class_names_of(table)
    columns = ["method", "config", "seeds_ok", "avg_dice_mean", "avg_dice_std", "avg_asd_mean", "avg_asd_std"]
    columns += [f"{n} dice_{s}" for n in names for s in ("mean", "std")]
    columns += [f"{n} asd_{s}" for n in names for s in ("mean", "std")]
    columns += ["s_per_iter", "error"]
    out = []
    for entry in table:
        row = {"method": entry["label"], "config": entry["config"], "seeds_ok": " ".join(map(str, entry["seeds_ok"])),
               "error": "; ".join(entry["errors"]), "s_per_iter": entry.get("s_per_iter", math.nan)}  # fmt: skip
        for r in entry["combined"] or []:
            prefix = "avg_" if str(r["class_index"]) == "avg" else f"{r['class_name']} "
            for m in CSV_STATS:
                row[f"{prefix}{m}_mean"], row[f"{prefix}{m}_std"] = r[f"{m}_mean"], r[f"{m}_std"]
        out.append(row)
    return out, columns


def plot(res: dict, path: Path) -> None:
    """Grouped bar chart: per-class Dice (+ Avg), one bar per configuration, std over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from scdl_monai.evaluation.files import atomic_write as atomic_write_with

    table = [e for e in res["table"] if e["combined"]]
    names = class_names_of(res["table"]) + ["Avg"]
    fig = Figure(figsize=(16, 6), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.85 / max(1, len(table))
    cmap = fig.colormaps["tab20"] if hasattr(fig, "colormaps") else None
    if cmap is None:
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
    for i, entry in enumerate(table):
        rows = [r for r in entry["combined"] if str(r["class_index"]) != "avg"]
        rows += [r for r in entry["combined"] if str(r["class_index"]) == "avg"]
        means = [0.0 if math.isnan(r["dice_mean"]) else r["dice_mean"] for r in rows]
        stds = [0.0 if math.isnan(r["dice_std"]) else r["dice_std"] for r in rows]
        xs = [k + (i - (len(table) - 1) / 2) * width for k in range(len(rows))]
        ax.bar(xs, means, width, yerr=stds, capsize=1.5, label=entry["label"], color=cmap(i % 20),
               error_kw={"elinewidth": 0.6})  # fmt: skip
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    s = res["size"]
    ax.set_title(
        f"Phantom, {s['iterations']} iterations, patch {s['patch']}^3, n_filters {s['n_filters']}; mean ± std over "
        f"seeds {res['seeds']}{' (QUICK: meaningless)' if res['quick'] else ''}",
        fontsize=10,
    )
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# ------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke sizes (numbers meaningless)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (quality.{md,csv,png,json})")
    parser.add_argument("--configs", nargs="+", default=None,
                        help=f"configurations (default: {' '.join(DEFAULT_CONFIGS)}); any bundle method, '+scdl' adds SCDL")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=None, help="override the budget's iteration count")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each by default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--work-dir", default=None, help="keep phantom and runs here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs found in --work-dir")
    parser.add_argument("--reuse-only", action="store_true",
                        help="with --work-dir: only tabulate finished runs; missing ones become 'not run' rows")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        return child_main(run_one, args.child, ("config", "seed"))

    size = dict(QUICK if args.quick else FULL)
    if args.iterations is not None:
        if args.iterations < 1:
            parser.error(f"--iterations must be >= 1, got {args.iterations}")
        size["iterations"] = args.iterations
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    configs = list(args.configs or DEFAULT_CONFIGS)
    for c in configs:
        try:
            parse_config(c)
        except ValueError as err:
            parser.error(f"--configs: {err}")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    if args.reuse_only and args.work_dir is None:
        parser.error("--reuse-only needs --work-dir (where the finished runs are)")

    out_dir = Path(args.out)
    started, t0, load_before = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter(), loadavg()
    tmp = tempfile.TemporaryDirectory(prefix="quality_") if args.work_dir is None else None
    work = Path(args.work_dir or tmp.name)
    data_dir = work / "phantom"
    data_dir.mkdir(parents=True, exist_ok=True)
    data = make_data(data_dir, size)
    print(f"phantom ready in {time.perf_counter() - t0:.0f} s: {data['split']}", flush=True)
    specs = [
        {"config": c, "seed": seed, "size": size, "threads": args.threads, "data_dir": str(data_dir),
         "meta_file": str(data_dir / "metadata.json"), "run_dir": str(work / "runs" / f"{c}_seed{seed}"),
         "reuse": args.reuse or args.reuse_only, "reuse_only": args.reuse_only}  # fmt: skip
        for seed in seeds
        for c in configs
    ]
    rows = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(_child, specs):
            rows.append(row)
            msg = (f"mean Dice {row['summary'][-1]['dice_mean']:.2f}, {row['s_per_iter']:.2f} s/it"
                   if row["status"] == "ok" else f"ERROR {row['error']}")  # fmt: skip
            print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {row['config']:<22} seed {row['seed']}: {msg}",
                  flush=True)  # fmt: skip
    res = {
        "benchmark": "quality", "quick": args.quick, "started": started, "wall_s": round(time.perf_counter() - t0, 1),
        "load_average_before": load_before, "load_average_after": loadavg(), "machine": machine_info(),
        "size": size, "seeds": seeds, "jobs": args.jobs, "threads": args.threads, "data": data,
        "table": aggregate(rows, configs), "runs": rows, "reused": sum(bool(r.get("reused")) for r in rows),
    }  # fmt: skip
    from scdl_monai.evaluation.tables import write_csv

    md = markdown(res)
    atomic_write(out_dir / "quality.md", md)
    table_rows, columns = csv_rows(res["table"])
    write_csv(table_rows, out_dir / "quality.csv", columns)
    plot(res, out_dir / "quality.png")
    atomic_write(out_dir / "quality.json", json.dumps(res, indent=1, default=str) + "\n")
    print(md)
    print(f"wrote {out_dir}/quality.{{md,csv,png,json}}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
