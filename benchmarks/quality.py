"""Quality benchmark: every method, with and without SCDL, at a budget that converges.

What it measures: the **bundle configs users run** (:func:`scdl_monai.bundles.compose_config`,
``kind="train"``; ``+scdl`` adds the SCDL overlay) executed in-process by
:class:`monai.bundle.ConfigWorkflow`, one subprocess per (configuration, seed), with overrides that
set one budget for every method.

Data: by default the imbalanced phantom (:func:`scdl_monai.data.phantom.generate_phantom`, phantom
seed 0, fixed split; liver : adrenal >= 500 : 1 in every case); with ``--datalist PATH`` any
datalist with ``training`` / ``unlabeled`` / ``validation`` / ``test`` keys, as
``python -m scdl_monai.data datalist`` writes it for Synapse or AMOS (``--dataset``). The fully
supervised upper bound trains on ``training`` + ``unlabeled`` with their labels (phantom: known;
a user datalist: the ``label`` of each unlabeled entry, else that configuration reports an error).

Budgets (``--budget``):

* ``phantom`` (default): the converged phantom budget of :data:`BUDGETS` — VNet-family networks at
  ``n_filters`` 8, random patches (2 labeled + 2 unlabeled per step; the supervised rows 4 labeled, as
  the supervised reference trains), every method's own optimizer, learning rate, losses and
  schedule shape (epoch-level poly LR and ramps stretched to the run, GA/MagicNet iteration
  schedules scaled, SCDL warm-up a fraction of the run by itself);
  native preprocessing protocol for every method (one data grid); **two declared deviations from the
  references**, because at ``n_filters`` 8 and 1,200 iterations they keep every network from
  converging (fully supervised upper bound 12.6 avg Dice with both, 48.8 with PyTorch's default
  init alone, 72.4 with neither; ``benchmarks/results/budget_probes``): ``dropout`` 0 for every
  method (DHC, CPS and supervised train with 0.5 in their references) and Kaiming init where a
  reference keeps PyTorch's default (supervised, MagicNet); ``--set dropout=0.5 --set
  network_def#init=null`` restores the references; MagicNet cubes of a third of the
  patch with batch norm (a cube that small has one bottleneck voxel) and a location head of 256;
* ``quick``: CI smoke sizes (numbers meaningless);
* ``bundle``: no size or schedule overrides: each bundle's own patch, width, epochs and protocol
  (``--protocol method``) — the paper table on real data on a GPU machine (docs/benchmarks.md).

Model selection: every ``--val-every`` iterations the inference network is scored on the
validation cases (mean foreground Dice, both-empty classes skipped); the best state is kept in
memory. Both the **best-validation** and the **last-iteration** model are evaluated on the test
cases: per-class Dice (%) and symmetric ASD (mm) from
:func:`scdl_monai.evaluation.metrics.evaluate_case` (project mode: a missed organ scores Dice 0 and
ASD = the image diagonal in mm).

Runs are resumable across machines: each finished (configuration, seed) result is written
atomically to ``<out>/runs/<config>_seed<k>.json`` with a fingerprint of everything that decides
it (the effective config — the composed bundle config with the run's overrides applied —, the data,
the validation interval and the thread count); ``--reuse`` takes a stored result whose fingerprint
matches and runs the rest; an interrupted run leaves no result file. Commit ``<out>/runs`` to
continue elsewhere.

Outputs (atomic): ``quality.md`` (paper layout — avg Dice, avg ASD, a **tail** column (mean Dice of
the tail organs), per-organ Dice — for the best-validation and the last-iteration model; paired
per-seed differences method+SCDL − method; budget and CPU-hours), ``quality.csv``, ``quality.json``,
``quality.png`` (per-class Dice bars) and ``quality_curves.png`` (validation Dice vs iteration, one
line per configuration, mean over seeds).

Examples::

    python benchmarks/quality.py --reuse                      # phantom budget; continues a partial run
    python benchmarks/quality.py --quick --out /tmp/q         # CI smoke test
    python benchmarks/quality.py --configs dhc dhc+scdl --seeds 0 1 2 --out /tmp/q
    python benchmarks/quality.py --datalist /data/synapse/datalist.json --budget bundle --protocol method \\
        --device cuda --precision fp16 --jobs 1 --threads 8 --out results/synapse
"""

from __future__ import annotations

import argparse
import copy
import hashlib
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
    "supervised": "Supervised (labeled only)",
    "fully_supervised": "Fully supervised (all labels, upper bound)",
    "cps": "CPS",
    "dhc": "DHC",
    "ga_cps": "GA-CPS",
    "ga_magicnet": "GA-MagicNet",
    "magicnet": "MagicNet",
    "genericssl": "GenericSSL (A&D)",
    "simis": "SimiS",
    "cld": "CLD",
}
#: Tail organs (the rarest classes of Synapse; AMOS has all but the portal & splenic veins): their
#: mean Dice is the "Tail" column.
TAIL_ORGANS = (
    "gallbladder",
    "esophagus",
    "portal & splenic veins",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)

#: Budgets. ``phantom`` is the default of this benchmark (module docstring); ``quick`` is for CI.
BUDGETS = {
    "phantom": {
        "num_cases": 16, "shape": (64, 64, 48), "num_test": 4, "num_validation": 2, "labeled_fraction": 0.2,
        "pose_jitter": 0.0, "patch": 48, "n_filters": 8, "iterations": 1200, "epoch_length": 8, "batch": 2, "val_every": 100,
        # the supervised references train one network in batches of 4 (xmed-lab/DHC@990998d0
        # code/train_fully.py L14), the patches per step of the SSL methods' 2 labeled + 2 unlabeled
        "supervised_batch": 4,
        "precision": "bf16", "channels_last": True, "timeout_s": 4 * 3600,
        # declared deviation from the references (module docstring): no dropout, Kaiming init where a
        # reference uses PyTorch's default; `--set dropout=0.5 --set network_def#init=null` restores them
        "dropout": 0.0, "default_init": "kaiming",
    },
    "quick": {
        "num_cases": 7, "shape": (48, 48, 48), "num_test": 1, "num_validation": 1, "labeled_fraction": 0.2,
        "patch": 48, "n_filters": 4, "iterations": 2, "epoch_length": 1, "batch": 1, "val_every": 1,
        "precision": "fp32", "channels_last": False, "timeout_s": 600,
    },
    "bundle": {"val_every": 250, "precision": "fp32", "channels_last": False, "timeout_s": 7 * 24 * 3600},
}  # fmt: skip
#: Keys of the overrides that are file locations (left out of the fingerprint).
_PATH_KEYS = ("bundle_root", "dataset_dir", "datalist")


def parse_config(name: str) -> tuple[str, bool, bool]:
    """``"cps+scdl"`` -> (bundle method, scdl, all labels)."""
    base, _, suffix = name.partition("+")
    if suffix not in ("", "scdl"):
        raise ValueError(f"configuration {name!r}: only the '+scdl' suffix is known.")
    if base == "fully_supervised":
        return "supervised", False, True
    return base, suffix == "scdl", False


def config_label(name: str) -> str:
    base = name.partition("+")[0]
    return LABELS.get(base, base) + (" + SCDL" if name.endswith("+scdl") else "")


def overrides_for(method: str, scdl: bool, spec: dict, config: dict) -> dict:
    """Config overrides for one run: file locations, seed, device and precision, the budget.

    Iteration-denominated schedules keep their shape relative to the config's run length
    ``max_iterations`` (GA-CPS / MagicNet: 17,000 or 70,000): GA-MagicNet's poly over 70k stopped
    at 17k stays poly over 70/17 budgets; MagicNet's 200-step consistency ramp of ``rampup_interval``
    350 iterations keeps covering the same fraction of the run; SCDL's warm-up is a fraction of the
    run already (``scdl_warmup_fraction``).
    """
    size = spec["size"]
    out = {
        "bundle_root": spec["run_dir"], "dataset_dir": spec["dataset_dir"], "datalist": spec["datalist"],
        "seed": spec["seed"], "device": f"$torch.device('{spec['device']}')", "amp": spec["precision"] != "fp32",
        "precision": spec["precision"], "channels_last": spec["channels_last"], "num_workers": 0,
        "cache_rate": 1.0, "val_interval": 10**9, "checkpoint_saver": None, "resume_from": "",
    }  # fmt: skip
    if spec["budget"] == "bundle":
        return {**out, **(spec.get("extra_overrides") or {})}
    n_iter, epoch = size["iterations"], size["epoch_length"]
    batch = size.get("supervised_batch", size["batch"]) if method == "supervised" else size["batch"]
    out.update({
        "n_filters": size["n_filters"], "patch_size": [size["patch"]] * 3,
        "batch_size": batch, "unlabeled_batch_size": size["batch"],
        "train#trainer#epoch_length": epoch, "train#trainer#max_epochs": max(1, n_iter // epoch),
    })  # fmt: skip
    if "dropout" in size:
        out["dropout"] = size["dropout"]
    if size.get("default_init") and "init" in config.get("network_def", {}) and config["network_def"]["init"] is None:
        out["network_def#init"] = size["default_init"]
    if "max_iterations" in config:  # GA-CPS, MagicNet family
        scale = n_iter / float(config["max_iterations"])
        out.update(max_iterations=n_iter, iterations_per_epoch=epoch)
        if "poly_iterations" in config:
            out["poly_iterations"] = max(1, round(float(config["poly_iterations"]) * scale))
    if "magicnet" in method:
        # a 3x3x3 grid of cubes the VNet can take (multiples of 16): 48^3 patches when the budget's do not split
        patch = size["patch"] if size["patch"] % 48 == 0 else 48
        interval = float(config.get("method_def", {}).get("rampup_interval", 350))
        out.update({
            "patch_size": [patch] * 3, "cube_size": patch // 3, "location_hidden_features": 256,
            "network_def#norm": "batch",
            "method_def#rampup_interval": max(1, round(interval * n_iter / float(config["max_iterations"]))),
        })  # fmt: skip
    return {**out, **(spec.get("extra_overrides") or {})}


def compose(method: str, scdl: bool, dataset: str, protocol: str) -> dict:
    """The train config users get (``compose_config``); ``protocol="method"`` = the method's own."""
    from scdl_monai.bundles import compose_config, default_protocol

    proto = default_protocol(method) if protocol == "method" else protocol
    return compose_config("train", method, dataset, protocol=proto, scdl=scdl)


def effective_config(config: dict, overrides: dict) -> dict:
    """The config a run trains with: ``config`` with ``overrides`` applied as the workflow applies them.

    File locations (``_PATH_KEYS``) are left out, so the result does not depend on where a run lives.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(config))
    parser.update({k: v for k, v in overrides.items() if k not in _PATH_KEYS})
    return parser.get()


def fingerprint(config: dict, overrides: dict, spec: dict) -> str:
    """SHA-256 of everything that decides a run's result (not where its files live).

    It hashes the effective config, not the config and the overrides apart: a run made with
    ``--set scdl_injection=none`` and a run of a later default ``scdl_injection: none`` train the same
    thing and get the same fingerprint, so an ablation run becomes a main-table run when its setting
    becomes the default.
    """
    key = {
        "config": effective_config(config, overrides),
        "data": spec["data_id"],
        "val_every": spec["size"]["val_every"],
        "threads": spec["threads"],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def all_labels_spec(spec: dict) -> dict:
    """``spec`` of the fully supervised variant: the all-labels datalist, and data that says so.

    The datalist path is not part of the fingerprint, so the data identity carries the difference
    (without it the supervised and fully supervised runs of one seed would share a fingerprint).
    """
    return {**spec, "datalist": spec.get("datalist_full") or spec["datalist"],
            "data_id": {**spec["data_id"], "labels": "all"}}  # fmt: skip


# ------------------------------------------------------------------------------------ one run
def _foreground_dice(pred, label, num_classes: int) -> float:
    """Mean Dice (%) over foreground classes present in ``pred`` or ``label`` (validation score)."""
    import numpy as np

    scores = []
    for c in range(1, num_classes):
        p, g = pred == c, label == c
        denom = int(p.sum()) + int(g.sum())
        if denom:
            scores.append(200.0 * int(np.logical_and(p, g).sum()) / denom)
    return float(np.mean(scores)) if scores else 0.0


def run_one(spec: dict) -> dict:
    """Train one configuration for one seed from its bundle config; validate along the way; test."""
    import numpy as np
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from scdl_monai.evaluation.metrics import evaluate_case
    from scdl_monai.evaluation.tables import case_rows_for, summarize_cases

    torch.set_num_threads(spec["threads"])
    logging.disable(logging.INFO)  # StatsHandler prints every iteration otherwise
    method, scdl, full_labels = parse_config(spec["config"])
    root = Path(spec["run_dir"])
    root.mkdir(parents=True, exist_ok=True)
    config = compose(method, scdl, spec["dataset"], spec["protocol"])
    (root / "train.json").write_text(json.dumps(config))
    if full_labels:
        if not spec.get("datalist_full"):
            raise ValueError("fully_supervised needs a label for every unlabeled case of the datalist")
        spec = all_labels_spec(spec)
    overrides = overrides_for(method, scdl, spec, config)
    (root / "overrides.json").write_text(json.dumps(overrides))  # the run's settings (benchmarks/scdl_probe.py)
    row = {"config": spec["config"], "seed": spec["seed"], "fingerprint": fingerprint(config, overrides, spec)}
    t0 = time.perf_counter()
    wf = ConfigWorkflow(config_file=str(root / "train.json"), workflow_type="train",
                        meta_file=spec["meta_file"], **overrides)  # fmt: skip
    wf.initialize()
    parser = wf.parser
    trainer = parser.get_parsed_content("train#trainer")
    network = parser.get_parsed_content("inference_network")
    preprocess = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    num_classes = int(parser.get_parsed_content("num_classes"))
    names = list(parser.get_parsed_content("class_names"))[1:]
    spacing = [float(s) for s in parser.get_parsed_content("pixdim")]
    datalist = json.loads(Path(spec["datalist"]).read_text())
    base = Path(spec["datalist"]).parent

    def load(items):
        out = []
        for item in items:
            item = {k: (str(base / v) if k in ("image", "label") and not Path(v).is_absolute() else v)
                    for k, v in item.items()}  # fmt: skip
            d = preprocess(dict(item))
            image = d["image"].as_tensor() if hasattr(d["image"], "as_tensor") else d["image"]
            out.append((item.get("case_id", Path(item["image"]).name), image[None].float(),
                        np.asarray(d["label"][0]).astype(np.int64)))  # fmt: skip
        return out

    def predict(image):
        return inferer(image.to(spec["device"]), network).argmax(1)[0].cpu().numpy()

    validation = load(datalist.get("validation") or [])
    curve, best = [], {"dice": -1.0, "iteration": 0, "state": None}
    val_s = [0.0]

    def validate(engine) -> None:
        it = int(engine.state.iteration)
        if not validation or (curve and curve[-1][0] == it):
            return
        t = time.perf_counter()
        network.eval()
        with torch.no_grad():
            dice = float(np.mean([_foreground_dice(predict(img), lab, num_classes) for _, img, lab in validation]))
        curve.append((it, round(dice, 3)))
        with open(root / "progress.txt", "a") as f:  # for watching a long run; not a result
            f.write(f"iteration {it}: validation Dice {dice:.2f}\n")
        if dice > best["dice"]:
            best.update(dice=dice, iteration=it, state=copy.deepcopy(network.state_dict()))
        val_s[0] += time.perf_counter() - t

    every = max(1, int(spec["size"]["val_every"]))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=every), validate)
    trainer.add_event_handler(Events.COMPLETED, validate)
    t_train = time.perf_counter()
    wf.run()
    train_s = time.perf_counter() - t_train - val_s[0]
    row["iterations"] = int(trainer.state.iteration)
    out = trainer.state.output
    out = out[0] if isinstance(out, list) else out
    row["final_loss"] = float(out["loss"])
    if not math.isfinite(row["final_loss"]):
        raise FloatingPointError(f"non-finite final loss {row['final_loss']}")

    t_eval = time.perf_counter()
    test = load(datalist["test"])

    def score() -> list[dict]:
        network.eval()
        cases = []
        with torch.no_grad():
            for case_id, image, label in test:
                result = evaluate_case(predict(image), label, num_classes, spacing=spacing, include_hd95=False)
                cases += case_rows_for(case_id, result, names, "project")
        return summarize_cases(cases)

    summaries = {"last": score()}
    if best["state"] is not None and best["iteration"] != row["iterations"]:
        network.load_state_dict(best["state"])
        summaries["best"] = score()
    else:  # the last model is the best one (or there was no validation set)
        summaries["best"] = summaries["last"]
    wf.finalize()
    row.update(
        status="ok",
        train_s=round(train_s, 1),
        val_s=round(val_s[0], 1),
        eval_s=round(time.perf_counter() - t_eval, 1),
        total_s=round(time.perf_counter() - t0, 1),
        s_per_iter=round(train_s / max(1, row["iterations"]), 3),
        best_iteration=best["iteration"],
        best_val_dice=round(best["dice"], 3),
        curve=curve,
        summary=summaries["best"],
        summary_last=summaries["last"],
    )
    return row


#: Prefix of the one line ``--plan`` prints (benchmarks/rebase_runs.py parses it).
PLAN_MARKER = "quality plan: "


def parse_set(items) -> dict:
    """``--set KEY=VALUE`` items as overrides: JSON values (``true``, ``0.03``, ``[1, 2]``), else strings."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def result_path(out_dir: Path, config: str, seed: int) -> Path:
    return out_dir / "runs" / f"{config}_seed{seed}.json"


def _child(spec: dict) -> dict:
    """Run one (configuration, seed) in a subprocess, or reuse its stored result when it matches.

    A crash or time-out becomes an error row; only a finished run is written (atomically).
    """
    result = Path(spec["result_path"])
    if spec.get("reuse") and result.is_file():
        stored = json.loads(result.read_text())
        if stored.get("fingerprint") == spec["fingerprint"]:
            return {**stored, "reused": True}
        print(f"  {spec['config']} seed {spec['seed']}: stored result is for other settings "
              f"(fingerprint {stored.get('fingerprint')} != {spec['fingerprint']}); running again", flush=True)  # fmt: skip
    if spec.get("reuse_only"):
        return {"config": spec["config"], "seed": spec["seed"], "status": "error", "error": "not run"}
    t0 = time.perf_counter()
    row = run_child(__file__, spec, ("config", "seed"), spec["size"]["timeout_s"], spec["threads"])
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if row["status"] == "ok":
        row["threads"], row["commit"] = spec["threads"], spec.get("commit", "unknown")
        atomic_write(result, json.dumps(row) + "\n")
    elif "stderr_tail" in row:
        Path(spec["run_dir"]).mkdir(parents=True, exist_ok=True)
        (Path(spec["run_dir"]) / "stderr.txt").write_text(row.pop("stderr_tail"))
    return row


def expected_fingerprint(spec: dict) -> str:
    """The fingerprint a run of ``spec`` will have (composed here, as the child will)."""
    method, scdl, full_labels = parse_config(spec["config"])
    config = compose(method, scdl, spec["dataset"], spec["protocol"])
    if full_labels:
        spec = all_labels_spec(spec)
    return fingerprint(config, overrides_for(method, scdl, spec, config), spec)


# ------------------------------------------------------------------------------------ data
def make_phantom(data_dir: Path, size: dict) -> dict:
    """Phantom + the datalists (labeled fraction; all labels for the upper bound)."""
    from scdl_monai.data.phantom import generate_phantom

    settings = {k: size[k] for k in ("num_cases", "shape", "num_test", "num_validation", "labeled_fraction")}
    if size.get("pose_jitter"):
        settings["pose_jitter"] = size["pose_jitter"]
    path = generate_phantom(
        data_dir, num_cases=size["num_cases"], shape=size["shape"], seed=0,
        labeled_fraction=size["labeled_fraction"], num_validation=size["num_validation"], num_test=size["num_test"],
        pose_jitter=size.get("pose_jitter", 0.0),
    )  # fmt: skip
    info = describe_datalist(path, data_dir)
    info["data_id"] = {"phantom": {**settings, "shape": list(size["shape"]), "seed": 0}}
    return info


def describe_datalist(path: Path, work: Path) -> dict:
    """Split, imbalance and the fully supervised variant (written to ``work``) of a datalist."""
    from scdl_monai.data.phantom import class_voxel_shares

    path = Path(path).resolve()
    datalist = json.loads(path.read_text())
    for key in ("training", "test"):
        if not datalist.get(key):
            raise ValueError(f"{path}: datalist key {key!r} is missing or empty (needs training, unlabeled, "
                             "validation, test)")  # fmt: skip

    def absolute(entry: dict) -> dict:
        return {k: (str(path.parent / v) if k in ("image", "label") and not Path(v).is_absolute() else v)
                for k, v in entry.items()}  # fmt: skip

    unlabeled = [absolute(e) for e in datalist.get("unlabeled", [])]
    full_path = None
    if all("label" in e for e in unlabeled):
        full = {k: [absolute(e) for e in v] if isinstance(v, list) else v for k, v in datalist.items()}
        full["training"] = full["training"] + [
            {"image": e["image"], "label": e["label"], "case_id": e.get("case_id", Path(e["image"]).name)}
            for e in unlabeled
        ]
        full_path = Path(work) / "datalist_full.json"
        atomic_write(full_path, json.dumps(full, indent=1))
    elif "phantom" in datalist:  # written by generate_phantom: labels/<name> beside images/<name>
        labels = path.parent / "labels"
        guess = [{**e, "label": str(labels / Path(e["image"]).name)} for e in unlabeled]
        if all(Path(e["label"]).is_file() for e in guess):
            full = {k: [absolute(e) for e in v] if isinstance(v, list) else v for k, v in datalist.items()}
            full["training"] = full["training"] + guess
            full_path = Path(work) / "datalist_full.json"
            atomic_write(full_path, json.dumps(full, indent=1))
    case_ids = {k: [e.get("case_id", Path(e["image"]).name) for e in datalist.get(k, [])]
                for k in ("training", "unlabeled", "validation", "test")}  # fmt: skip
    labels_all = [absolute(e)["label"] for e in datalist["training"] + datalist["test"]]
    try:
        ratio = round(class_voxel_shares(labels_all)["largest_to_smallest"], 1)
    except Exception:  # a class absent everywhere: no ratio
        ratio = math.nan
    return {
        "datalist": str(path),
        "datalist_full": str(full_path) if full_path else None,
        "split": case_ids,
        "largest_to_smallest": ratio,
        "data_id": {"datalist_sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16]},
    }


# ------------------------------------------------------------------------------------ tables
def _tail_of(summary: list[dict], tail: tuple[str, ...]) -> float:
    vals = [float(r["dice_mean"]) for r in summary if str(r["class_name"]) in tail]
    vals = [v for v in vals if not math.isnan(v)]
    return float(statistics.fmean(vals)) if vals else math.nan


def _avg_of(summary: list[dict], key: str = "dice_mean") -> float:
    return float(next(r for r in summary if str(r["class_index"]) == "avg")[key])


def aggregate(rows: list[dict], configs: list[str], model: str, tail: tuple[str, ...]) -> list[dict]:
    """One entry per configuration for ``model`` ("best" or "last"): combined summary over seeds."""
    from scdl_monai.evaluation.tables import combine_runs

    key = "summary" if model == "best" else "summary_last"
    out = []
    for config in configs:
        runs = [r for r in rows if r["config"] == config]
        ok = [r for r in runs if r["status"] == "ok"]
        errors = sorted({f"seed {r['seed']}: {r['error']}" for r in runs if r["status"] != "ok"})
        entry = {"config": config, "label": config_label(config), "seeds_ok": [r["seed"] for r in ok],
                 "errors": errors, "combined": None}  # fmt: skip
        if ok:
            entry["combined"] = combine_runs([r[key] for r in ok], [f"seed {r['seed']}" for r in ok])
            tails = [_tail_of(r[key], tail) for r in ok]
            entry["tail_mean"] = statistics.fmean(tails)
            entry["tail_std"] = statistics.pstdev(tails) if len(tails) > 1 else math.nan
            entry["s_per_iter"] = statistics.median(r["s_per_iter"] for r in ok)
            entry["train_s"] = [r["train_s"] for r in ok]
            entry["best_iteration"] = [r.get("best_iteration") for r in ok]
        out.append(entry)
    return out


def paired_differences(rows: list[dict], configs: list[str], model: str, tail: tuple[str, ...]) -> list[dict]:
    """Per SSL method with both ``m`` and ``m+scdl`` run: (m+scdl − m) per common seed, mean ± std."""
    key = "summary" if model == "best" else "summary_last"
    ok = {(r["config"], r["seed"]): r for r in rows if r["status"] == "ok"}
    out = []
    for config in configs:
        if config.endswith("+scdl") or f"{config}+scdl" not in configs:
            continue
        seeds = sorted(s for (c, s) in ok if c == config and (f"{config}+scdl", s) in ok)
        if not seeds:
            continue
        d_avg = [_avg_of(ok[(f"{config}+scdl", s)][key]) - _avg_of(ok[(config, s)][key]) for s in seeds]
        d_tail = [_tail_of(ok[(f"{config}+scdl", s)][key], tail) - _tail_of(ok[(config, s)][key], tail) for s in seeds]
        d_asd = [_avg_of(ok[(f"{config}+scdl", s)][key], "asd_mean") - _avg_of(ok[(config, s)][key], "asd_mean")
                 for s in seeds]  # fmt: skip
        out.append({
            "method": config, "label": config_label(config), "seeds": seeds,
            "dice": d_avg, "tail": d_tail, "asd": d_asd,
            "improved_dice": sum(d > 0 for d in d_avg), "improved_tail": sum(d > 0 for d in d_tail),
        })  # fmt: skip
    return out


def _cell(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std``; just the mean when the std is NaN (a single seed)."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else math.nan)


def class_names_of(table: list[dict]) -> list[str]:
    for entry in table:
        if entry["combined"]:
            return [str(r["class_name"]) for r in entry["combined"] if str(r["class_index"]) != "avg"]
    from scdl_monai.data.datasets import SYNAPSE

    return list(SYNAPSE.class_names)[1:]


def _result_table(table: list[dict], names: list[str], seeds: list[int]) -> list[str]:
    lines = ["| Method | Avg Dice | Tail Dice | Avg ASD (mm) | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]  # fmt: skip
    nan = math.nan
    for entry in table:
        label = entry["label"]
        if entry["combined"] is None:
            status = "not run" if all(e.endswith(": not run") for e in entry["errors"]) else "FAILED"
            lines.append(f"| {label} | {status} | | | " + " | ".join("" for _ in names) + " |")
            continue
        rows = entry["combined"]
        avg = next(r for r in rows if str(r["class_index"]) == "avg")
        per_class = [r for r in rows if str(r["class_index"]) != "avg"]
        one = len(entry["seeds_ok"]) == 1
        note = f" ({len(entry['seeds_ok'])} seed{'s' if not one else ''})" if len(entry["seeds_ok"]) < len(seeds) else ""
        lines.append(
            f"| {label}{note} | {_cell(avg['dice_mean'], nan if one else avg['dice_std'])} | "
            f"{_cell(entry['tail_mean'], nan if one else entry['tail_std'])} | "
            f"{_cell(avg['asd_mean'], nan if one else avg['asd_std'])} | "
            + " | ".join(_cell(r["dice_mean"], nan if one else r["dice_std"], 1) for r in per_class)
            + " |"
        )
    return lines


def _paired_table(pairs: list[dict]) -> list[str]:
    lines = ["| Method | seeds | Δ Avg Dice | seeds improved | Δ Tail Dice | seeds improved | Δ Avg ASD (mm) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in pairs:
        n = len(p["seeds"])
        lines.append(
            f"| {p['label']} + SCDL − {p['label']} | {p['seeds']} | {_cell(*_mean_std(p['dice']))} | "
            f"{p['improved_dice']}/{n} | {_cell(*_mean_std(p['tail']))} | {p['improved_tail']}/{n} | "
            f"{_cell(*_mean_std(p['asd']))} |"
        )
    return lines


def cpu_hours(rows: list[dict]) -> float:
    """Sum over finished runs of their wall time × torch threads (the cost of the table)."""
    return sum(r.get("wall_s", r.get("total_s", 0.0)) * r.get("threads", 1) for r in rows if r["status"] == "ok") / 3600


def markdown(res: dict) -> str:
    s, tail = res["size"], res["tail"]
    names = class_names_of(res["table_best"])
    data = res["data"]
    split = data["split"]
    if res["budget"] == "bundle":
        budget = ("each bundle's own patch, width, schedule and epochs (`--budget bundle`), "
                  f"protocol {res['protocol']}")  # fmt: skip
    else:
        budget = (
            f"{s['iterations']} iterations (epochs of {s['epoch_length']}), batch {s['batch']} labeled "
            f"(+ {s['batch']} unlabeled) random patches of {s['patch']}^3, n_filters {s['n_filters']}, every method's "
            f"own optimizer, learning rate, losses and schedule shape, protocol {res['protocol']}"
        )
        if s.get("supervised_batch"):
            budget += (f"; the supervised rows train in batches of {s['supervised_batch']} labeled patches, as the "
                       "supervised reference does (DHC `train_fully.py` `--batch_size`)")
        if "dropout" in s:
            budget += (f"; deviations from the references: dropout {s['dropout']} for every method"
                       + (f", {s['default_init']} init where a reference keeps PyTorch's default (supervised, MagicNet)"
                          if s.get("default_init") else ""))  # fmt: skip
    source = (f"phantom seed 0, {s['num_cases']} cases of {'x'.join(map(str, s['shape']))} voxels (1.5x1.5x2 mm)"
              + (f", pose jitter {s['pose_jitter']}" if s.get("pose_jitter") else "")
              if "phantom" in data["data_id"] else f"datalist `{Path(data['datalist']).name}`")  # fmt: skip
    lines = [
        f"## Quality benchmark ({'QUICK smoke sizes, numbers meaningless' if res['quick'] else res['budget'] + ' budget'})",
        "",
        f"Data: {source}; split {len(split['training'])} labeled + {len(split['unlabeled'])} unlabeled training "
        f"cases, {len(split['validation'])} validation ({', '.join(split['validation'])}), {len(split['test'])} test "
        f"({', '.join(split['test'])}); largest:smallest organ voxel ratio {data['largest_to_smallest']}:1 "
        "(training + test labels).",
        "",
        f"Budget (every method): {budget}; precision {res['precision']}"
        f"{' + channels-last' if res['channels_last'] else ''}, device {res['device']}, code {res['commit']}, {res['threads']} thread(s) "
        f"per run, {res['jobs']} run(s) in parallel"
        + (f"; extra overrides {json.dumps(res['extra_overrides'])}" if res.get("extra_overrides") else "")
        + ". Validation (mean foreground Dice of the validation cases) every "
        f"{s['val_every']} iterations; the best-validation and the last-iteration model are both tested. "
        f"Seeds {res['seeds']}; cells are mean ± std (population) over seeds of the per-run class means over the "
        "test cases. Dice in %, ASD = symmetric average surface distance in mm (a missed organ counts Dice 0, "
        f"ASD = image diagonal). Tail = mean Dice of {', '.join(t for t in tail if t in names)}.",
        "",
        f"**Cost: {res['cpu_hours']:.2f} CPU-hours** for the {sum(r['status'] == 'ok' for r in res['runs'])} "
        "finished runs (sum of each run's wall time × its threads).",
        "",
        "### Best-validation model",
        "",
        *_result_table(res["table_best"], names, res["seeds"]),
        "",
        "### Last-iteration model",
        "",
        *_result_table(res["table_last"], names, res["seeds"]),
        "",
    ]
    lines += [*instrument_checks(res), ""]
    for model in ("best", "last"):
        pairs = res[f"paired_{model}"]
        if pairs:
            lines += [f"### Paired per-seed differences, method + SCDL − method ({'best-validation' if model == 'best' else 'last-iteration'} model)",
                      "", *_paired_table(pairs), ""]  # fmt: skip
    lines += ["### Runs", "",
              "| Method | seeds ok | s/iteration (median) | training s per seed | best-validation iteration per seed | errors |",
              "|---|---|---:|---|---|---|"]  # fmt: skip
    for entry in res["table_best"]:
        errs = "; ".join(entry["errors"]).replace("|", "/") or "-"
        spi = f"{entry['s_per_iter']:.2f}" if "s_per_iter" in entry else "-"
        lines.append(f"| {entry['label']} | {entry['seeds_ok']} | {spi} | {entry.get('train_s', '-')} | "
                     f"{entry.get('best_iteration', '-')} | {errs} |")  # fmt: skip
    lines += [
        "",
        f"Started {res['started']}, wall time of this invocation {res['wall_s'] / 60:.1f} min"
        + (f" ({res['reused']} runs reused from stored results)" if res.get("reused") else "")
        + f"; load average before {res['load_average_before']}, after {res['load_average_after']}; "
        f"{res['machine']['cpu']}, torch {res['machine']['torch']}, MONAI {res['machine']['monai']}.",
        "",
    ]
    return "\n".join(lines)


def _avg_dice(entry: dict) -> float:
    avg = [r for r in entry["combined"] or [] if str(r["class_index"]) == "avg"]
    return avg[0]["dice_mean"] if avg else math.nan


def instrument_checks(res: dict) -> list[str]:
    """Whether the table can rank methods (best-validation model): the upper bound reaches 65 avg
    Dice, is the best row and leads 20%-labeled supervised by 10 points; every row has 3 seeds."""
    rows = {e["config"]: e for e in res["table_best"] if e["combined"]}
    lines = ["### Can this table rank methods? (best-validation model)", ""]
    upper, sup = rows.get("fully_supervised"), rows.get("supervised")
    if upper is None or sup is None:
        return lines + ["Not decided: the supervised and fully supervised rows are both needed."]
    u, s = _avg_dice(upper), _avg_dice(sup)
    # rows are compared on the same seeds as the upper bound only (a 1-seed row is no rank)
    same = [e for e in rows.values() if sorted(e["seeds_ok"]) == sorted(upper["seeds_ok"])]
    best = max(same, key=_avg_dice)
    few = [e["label"] for e in res["table_best"] if len(e["seeds_ok"]) < 3]
    checks = [
        (f"upper bound ≥ 65 avg Dice: {u:.2f}", u >= 65),
        (f"upper bound is the best row among the {len(same)} rows with its seeds {upper['seeds_ok']}: best is "
         f"{best['label']} ({_avg_dice(best):.2f})", best is upper),
        (f"upper bound − supervised ≥ 10 points: {u - s:.2f}", u - s >= 10),
        ("every configuration has ≥ 3 seeds" + (f": not yet {', '.join(few)}" if few else ""), not few),
    ]
    return lines + [f"- {'yes' if ok else '**no**'}: {text}" for text, ok in checks]


def csv_rows(res: dict) -> tuple[list[dict], list[str]]:
    names = class_names_of(res["table_best"])
    columns = ["model", "method", "config", "seeds_ok", "avg_dice_mean", "avg_dice_std", "tail_dice_mean",
               "tail_dice_std", "avg_asd_mean", "avg_asd_std"]  # fmt: skip
    columns += [f"{n} dice_{s}" for n in names for s in ("mean", "std")]
    columns += [f"{n} asd_{s}" for n in names for s in ("mean", "std")]
    columns += ["s_per_iter", "error"]
    out = []
    for model in ("best", "last"):
        for entry in res[f"table_{model}"]:
            row = {"model": model, "method": entry["label"], "config": entry["config"],
                   "seeds_ok": " ".join(map(str, entry["seeds_ok"])), "error": "; ".join(entry["errors"]),
                   "s_per_iter": entry.get("s_per_iter", math.nan),
                   "tail_dice_mean": entry.get("tail_mean", math.nan), "tail_dice_std": entry.get("tail_std", math.nan)}  # fmt: skip
            for r in entry["combined"] or []:
                prefix = "avg_" if str(r["class_index"]) == "avg" else f"{r['class_name']} "
                for m in ("dice", "asd"):
                    row[f"{prefix}{m}_mean"], row[f"{prefix}{m}_std"] = r[f"{m}_mean"], r[f"{m}_std"]
            out.append(row)
    return out, columns


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    from scdl_monai.evaluation.files import atomic_write as atomic_write_with

    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def plot_bars(res: dict, path: Path) -> None:
    """Grouped bar chart: per-class Dice (+ Tail, Avg) of the best-validation model, std over seeds."""
    import matplotlib

    table = [e for e in res["table_best"] if e["combined"]]
    names = class_names_of(res["table_best"]) + ["Tail", "Avg"]
    fig = _figure((17, 6))
    ax = fig.subplots()
    width = 0.85 / max(1, len(table))
    cmap = matplotlib.colormaps["tab20"]
    for i, entry in enumerate(table):
        per_class = [r for r in entry["combined"] if str(r["class_index"]) != "avg"]
        avg = next(r for r in entry["combined"] if str(r["class_index"]) == "avg")
        means = [r["dice_mean"] for r in per_class] + [entry["tail_mean"], avg["dice_mean"]]
        stds = [r["dice_std"] for r in per_class] + [entry["tail_std"], avg["dice_std"]]
        means = [0.0 if math.isnan(v) else v for v in means]
        stds = [0.0 if math.isnan(v) else v for v in stds]
        xs = [k + (i - (len(table) - 1) / 2) * width for k in range(len(means))]
        ax.bar(xs, means, width, yerr=stds, capsize=1.5, label=entry["label"], color=cmap(i % 20),
               error_kw={"elinewidth": 0.6})  # fmt: skip
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_title(f"Per-class test Dice, best-validation model; mean ± std over seeds {res['seeds']}"
                 f"{' (QUICK: meaningless)' if res['quick'] else ''}", fontsize=10)  # fmt: skip
    _save(fig, path)


def plot_curves(res: dict, path: Path) -> None:
    """Validation Dice vs iteration, one line per configuration (mean over seeds; band = min..max)."""
    import matplotlib
    import numpy as np

    fig = _figure((11, 6))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab20"]
    for i, config in enumerate(res["configs"]):
        curves = [r["curve"] for r in res["runs"] if r["config"] == config and r["status"] == "ok" and r.get("curve")]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        its = [c[0] for c in curves[0][:n]]
        vals = np.array([[v for _, v in c[:n]] for c in curves])
        style = "--" if config.endswith("+scdl") else "-"
        ax.plot(its, vals.mean(0), style, color=cmap(i % 20), label=config_label(config), linewidth=1.4)
        if len(curves) > 1:
            ax.fill_between(its, vals.min(0), vals.max(0), color=cmap(i % 20), alpha=0.12)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mean foreground Dice (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.set_title(f"Learning curves (mean over seeds {res['seeds']}, band = min..max)", fontsize=10)
    _save(fig, path)


# ------------------------------------------------------------------------------------ CLI
def _commit() -> str:
    """The repository's commit (``+dirty`` with local changes), or "unknown" outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke sizes (numbers meaningless); = --budget quick")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default=None, help="phantom (default), quick, bundle")
    parser.add_argument("--datalist", default=None, help="train/evaluate on this datalist instead of the phantom")
    parser.add_argument("--dataset", choices=("synapse", "amos"), default="synapse", help="classes of the datalist")
    parser.add_argument("--protocol", default="native", help="preprocessing protocol: native, dhc, ga, or method "
                        "(each method's own)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                        help="default: the budget's (phantom: bf16, quick and bundle: fp32)")
    parser.add_argument("--channels-last", choices=("true", "false"), default=None,
                        help="channels-last 3D memory format (default: the budget's; phantom: true)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0)")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (quality.*, runs/)")
    parser.add_argument("--configs", nargs="+", default=None,
                        help=f"configurations (default: {' '.join(DEFAULT_CONFIGS)}); any bundle method, '+scdl' adds SCDL")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=None, help="override the budget's iteration count")
    parser.add_argument("--val-every", type=int, default=None, help="validate every N iterations")
    parser.add_argument("--patch", type=int, default=None, help="override the budget's (cubic) patch size")
    parser.add_argument("--pose-jitter", type=float, default=None,
                        help="phantom case-to-case pose/anatomy variability in [0, 1] (default 0: the original phantom)")  # fmt: skip
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra bundle override for every run (VALUE as JSON, else a string), e.g. "
                        "--set dropout=0 --set scdl_token_scope=labeled; part of the fingerprint")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--work-dir", default=None, help="keep data and run folders here (default: temporary)")
    parser.add_argument("--reuse", action="store_true", help="reuse stored results in <out>/runs whose settings match")
    parser.add_argument("--reuse-only", action="store_true", help="only tabulate stored results; missing = 'not run'")
    parser.add_argument("--plan", action="store_true",
                        help="print the planned runs and their fingerprints as JSON, run nothing")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(run_one, args.child, ("config", "seed"))

    budget = "quick" if args.quick else (args.budget or "phantom")
    size = dict(BUDGETS[budget])
    for key, value in (("iterations", args.iterations), ("val_every", args.val_every), ("patch", args.patch)):
        if value is not None:
            if value < 1:
                parser.error(f"--{key.replace('_', '-')} must be >= 1, got {value}")
            size[key] = value
    if budget == "bundle" and (args.iterations is not None or args.patch is not None):
        parser.error("--iterations and --patch do not apply to --budget bundle (each bundle keeps its own)")
    if args.pose_jitter is not None:
        if not 0.0 <= args.pose_jitter <= 1.0 or args.datalist is not None:
            parser.error(f"--pose-jitter must be in [0, 1] and applies to the phantom only, got {args.pose_jitter}")
        size["pose_jitter"] = args.pose_jitter
    if args.patch is not None and args.patch % 16:
        parser.error(f"--patch must be a multiple of 16 (the VNet's 4 down-samplings), got {args.patch}")
    if budget == "bundle" and args.datalist is None:
        parser.error("--budget bundle needs --datalist (the bundles' sizes do not fit the phantom)")
    if args.protocol not in ("native", "dhc", "ga", "method"):
        parser.error(f"--protocol {args.protocol!r}: choose native, dhc, ga or method")
    try:
        extra = parse_set(args.overrides)
    except ValueError as err:
        parser.error(str(err))
    precision = args.precision or size["precision"]
    channels_last = size["channels_last"] if args.channels_last is None else args.channels_last == "true"
    seeds = args.seeds if args.seeds is not None else ([0] if budget == "quick" else [0, 1, 2])
    configs = list(args.configs or DEFAULT_CONFIGS)
    for c in configs:
        try:
            parse_config(c)
        except ValueError as err:
            parser.error(f"--configs: {err}")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")
    if args.datalist is not None and not Path(args.datalist).is_file():
        parser.error(f"--datalist {args.datalist}: file not found")
    try:
        import torch

        torch.device(args.device)
    except (RuntimeError, ValueError) as err:
        parser.error(f"--device {args.device!r}: {err}")

    out_dir = Path(args.out)
    started, t0, load_before = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter(), loadavg()
    tmp = tempfile.TemporaryDirectory(prefix="quality_") if args.work_dir is None else None
    work = Path(args.work_dir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.datalist is None:
            data_dir = work / "phantom"
            data_dir.mkdir(parents=True, exist_ok=True)
            data = make_phantom(data_dir, size)
        else:
            data = describe_datalist(Path(args.datalist), work)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from scdl_monai.bundles import build_metadata

    meta_file = work / "metadata.json"
    meta_file.write_text(json.dumps(build_metadata("supervised", args.dataset)))
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {data['split']}", flush=True)
    specs = []
    for seed in seeds:
        for c in configs:
            spec = {
                "config": c, "seed": seed, "size": size, "budget": budget, "threads": args.threads,
                "dataset": args.dataset, "protocol": args.protocol, "device": args.device,
                "precision": precision, "channels_last": channels_last,
                "dataset_dir": str(Path(data["datalist"]).parent), "datalist": data["datalist"],
                "datalist_full": data["datalist_full"], "data_id": data["data_id"], "meta_file": str(meta_file),
                "run_dir": str(work / "runs" / f"{c}_seed{seed}"), "result_path": str(result_path(out_dir, c, seed)),
                "reuse": args.reuse or args.reuse_only, "reuse_only": args.reuse_only, "extra_overrides": extra,
            }  # fmt: skip
            try:
                spec["fingerprint"] = expected_fingerprint(spec)
            except ValueError:  # an unknown method: the child reports it as an error row
                spec["fingerprint"] = None
            specs.append(spec)
    if args.plan:
        print(PLAN_MARKER + json.dumps([{k: s[k] for k in ("config", "seed", "fingerprint")} for s in specs]))
        if tmp is not None:
            tmp.cleanup()
        return 0
    commit = _commit()
    for spec in specs:
        spec["commit"] = commit
    rows = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(_child, specs):
            rows.append(row)
            if row["status"] == "ok":
                msg = (f"test Dice best-val {_avg_of(row['summary']):.2f} (it {row['best_iteration']}), last "
                       f"{_avg_of(row['summary_last']):.2f}, {row['s_per_iter']:.2f} s/it"
                       + (" [stored]" if row.get("reused") else ""))  # fmt: skip
            else:
                msg = f"ERROR {row['error']}"
            print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {row['config']:<22} seed {row['seed']}: {msg}",
                  flush=True)  # fmt: skip
    tail = TAIL_ORGANS
    res = {
        "benchmark": "quality", "quick": budget == "quick", "budget": budget, "started": started,
        "wall_s": round(time.perf_counter() - t0, 1), "load_average_before": load_before,
        "load_average_after": loadavg(), "machine": machine_info(), "size": size, "seeds": seeds,
        "configs": configs, "jobs": args.jobs, "threads": args.threads, "device": args.device,
        "precision": precision, "channels_last": channels_last, "protocol": args.protocol, "commit": _commit(),
        "data": data, "tail": list(tail), "extra_overrides": extra,
        "table_best": aggregate(rows, configs, "best", tail), "table_last": aggregate(rows, configs, "last", tail),
        "paired_best": paired_differences(rows, configs, "best", tail),
        "paired_last": paired_differences(rows, configs, "last", tail),
        "runs": rows, "reused": sum(bool(r.get("reused")) for r in rows), "cpu_hours": cpu_hours(rows),
    }  # fmt: skip
    from scdl_monai.evaluation.tables import write_csv

    md = markdown(res)
    atomic_write(out_dir / "quality.md", md)
    table_rows, columns = csv_rows(res)
    write_csv(table_rows, out_dir / "quality.csv", columns)
    plot_bars(res, out_dir / "quality.png")
    plot_curves(res, out_dir / "quality_curves.png")
    atomic_write(out_dir / "quality.json", json.dumps(res, indent=1, default=str) + "\n")
    print(md)
    print(f"wrote {out_dir}/quality.{{md,csv,png,json}}, quality_curves.png and {out_dir}/runs/")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
