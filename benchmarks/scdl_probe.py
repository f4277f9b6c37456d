"""What did the SCDL branch of a benchmark run learn? Token assignments, proxies, prior strength.

For every given run folder of ``benchmarks/quality.py`` (``--work-dir W`` keeps them as
``W/runs/<config>_seed<N>``) that trained a ``+scdl`` configuration (a baseline run gets its Dice
figures only, for comparison), this script rebuilds the run's
inference network from its ``train.json`` and ``overrides.json``, loads the last-iteration model
(``models/model.pt``) and reports, per SCDL network (:func:`scdl_monai.networks.scdl_diagnostics.probe_scdl_network`,
on patches tiling the test volumes):

* token accuracy of the class assignment ``argmax P(c|t)`` against each token cell's majority
  class, next to the all-majority baseline, and the mean recall over the organ classes;
* the proxies: mean σ (Xavier-uniform initialisation: softplus(0) ≈ 0.693), the largest cosine
  between two class means;
* ``‖projected prior‖ / ‖feature it is added to‖`` at the finest injection target (the finest
  decoder stage for ``all_stages``, the bottleneck for ``bottleneck``);

and the run's test Dice with the prior injected, with it switched off (same weights), and with the
prior on but every normalisation layer using each window's own batch statistics instead of its
running estimates (train mode without gradients: no SCDL sampling; a gap to the first figure means
the running statistics do not describe the features the network computes at inference).

Runs from before ``overrides.json`` existed are rebuilt from the phantom budget, the seed in the
folder name and ``--set`` (the overrides the run was made with).

Usage (repository root)::

    python benchmarks/scdl_probe.py W/runs/dhc+scdl_seed0 W/runs/dhc+scdl_seed1 --out benchmarks/results/scdl_probe
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import quality  # noqa: E402

from common import atomic_write  # noqa: E402

_RUN_NAME = re.compile(r"^(?P<config>.+)_seed(?P<seed>\d+)$")


def run_overrides(run_dir: Path, extra: dict) -> dict:
    """The overrides the run was trained with (``overrides.json``, else rebuilt; see module doc)."""
    stored = run_dir / "overrides.json"
    if stored.is_file():
        return json.loads(stored.read_text())
    match = _RUN_NAME.match(run_dir.name)
    if not match:
        raise ValueError(f"{run_dir}: no overrides.json and the folder name is not <config>_seed<N>")
    method, scdl, _ = quality.parse_config(match["config"])
    work = run_dir.parent.parent
    size = quality.BUDGETS["phantom"]
    spec = {
        "run_dir": str(run_dir), "dataset_dir": str(work / "phantom"), "datalist": str(work / "phantom" / "datalist.json"),
        "seed": int(match["seed"]), "device": "cpu", "precision": size["precision"],
        "channels_last": size["channels_last"], "budget": "phantom", "size": size, "extra_overrides": extra,
    }  # fmt: skip
    return quality.overrides_for(method, scdl, spec, json.loads((run_dir / "train.json").read_text()))


def _tiles(image, label, patch):
    """Patches tiling a volume: per axis, starts 0 and size − patch (and the centre if that leaves a gap)."""
    starts = []
    for size, p in zip(image.shape[-3:], patch):
        s = sorted({0, max(0, size - p)} | ({(size - p) // 2} if size > 2 * p else set()))
        starts.append(s)
    for a, b, c in itertools.product(*starts):
        sl = (..., slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
        yield image[sl], label[sl]


def probe_run(run_dir: Path, extra: dict, threads: int) -> dict:
    import numpy as np
    import torch
    from monai.bundle import ConfigWorkflow

    from scdl_monai.networks.scdl_diagnostics import find_scdl_networks, probe_scdl_network

    torch.set_num_threads(threads)
    overrides = run_overrides(run_dir, extra)
    meta = run_dir.parent.parent / "metadata.json"
    kwargs = {"meta_file": str(meta)} if meta.is_file() else {}
    wf = ConfigWorkflow(config_file=str(run_dir / "train.json"), workflow_type="train", **kwargs, **overrides)
    wf.initialize()
    parser = wf.parser
    network = parser.get_parsed_content("inference_network")
    state = torch.load(run_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state.get("model", state) if "model" in state else state)
    except RuntimeError as err:
        raise ValueError(
            f"{run_dir}: models/model.pt does not fit the network rebuilt from train.json and the overrides "
            f"({str(err).splitlines()[0]}); give the --set overrides the run was made with"
        ) from None
    network.eval()
    preprocess = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    num_classes = int(parser.get_parsed_content("num_classes"))
    patch = [int(p) for p in parser.get_parsed_content("patch_size")]
    datalist_path = Path(overrides["datalist"])
    datalist = json.loads(datalist_path.read_text())
    cases = []
    for item in datalist["test"]:
        item = {k: (str(datalist_path.parent / v) if k in ("image", "label") and not Path(v).is_absolute() else v)
                for k, v in item.items()}  # fmt: skip
        d = preprocess(dict(item))
        image = d["image"].as_tensor() if hasattr(d["image"], "as_tensor") else d["image"]
        label = d["label"].as_tensor() if hasattr(d["label"], "as_tensor") else d["label"]
        cases.append((image[None].float(), label[None].long()))
    scdl = find_scdl_networks(network)  # none for a baseline run: only its Dice figures are reported
    reports = {}
    for name, net in scdl:
        batches = [tile for image, label in cases for tile in _tiles(image, label, patch)]
        reports[name or "network"] = probe_scdl_network(net, batches)

    def dice() -> float:
        with torch.no_grad():
            return float(np.mean([
                quality._foreground_dice(inferer(image, network).argmax(1)[0].numpy(), label[0, 0].numpy(), num_classes)
                for image, label in cases
            ]))  # fmt: skip

    dice_on = dice()
    flags = [net.use_prior_at_inference for _, net in scdl]
    for _, net in scdl:
        net.use_prior_at_inference = False
    dice_off = round(dice(), 2) if scdl else None
    for (_, net), flag in zip(scdl, flags):
        net.use_prior_at_inference = flag
    # normalisation with each window's own batch statistics instead of the running ones (last: it updates them)
    network.train()
    dice_batch_stats = dice()
    return {"run": run_dir.name, "test_dice_prior_on": round(dice_on, 2), "test_dice_prior_off": dice_off,
            "test_dice_batch_stats": round(dice_batch_stats, 2), "networks": reports}  # fmt: skip


def markdown(records: list[dict]) -> str:
    lines = [
        "| Run | Network | Token acc. | Majority baseline | Organ recall | σ mean | Max proxy cos | Prior/feature (finest target) "
        "| Test Dice prior on | off | batch-stat norm. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        if not rec["networks"]:  # a baseline run
            lines.append(f"| {rec['run']} | (no SCDL) | | | | | | | {rec['test_dice_prior_on']:.2f} | – "
                         f"| {rec['test_dice_batch_stats']:.2f} |")  # fmt: skip
        for name, r in rec["networks"].items():
            organs = [x for x in r["class_recall"][1:] if not math.isnan(x)]
            recall = sum(organs) / len(organs) if organs else math.nan
            finest = r["prior_to_feature"][-1] if r["prior_to_feature"] else math.nan
            lines.append(
                f"| {rec['run']} | {name} | {100 * r['token_accuracy']:.1f} | {100 * r['majority_baseline']:.1f} "
                f"| {100 * recall:.1f} | {r['sigma_mean']:.3f} | {r['max_proxy_cosine']:.2f} | {finest:.2f} "
                f"| {rec['test_dice_prior_on']:.2f} | {rec['test_dice_prior_off']:.2f} | {rec['test_dice_batch_stats']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders <work-dir>/runs/<config>_seed<N> of quality.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides the runs were made with (only for runs without overrides.json)")  # fmt: skip
    parser.add_argument("--out", default=None, help="write scdl_probe.json and scdl_probe.md here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        extra = quality.parse_set(args.overrides)
    except ValueError as err:
        parser.error(str(err))
    records = []
    for run in args.runs:
        run_dir = Path(run)
        if not (run_dir / "train.json").is_file() or not (run_dir / "models" / "model.pt").is_file():
            parser.error(f"{run_dir}: not a finished quality.py run folder (needs train.json and models/model.pt)")
        try:
            records.append(probe_run(run_dir, extra, args.threads))
        except ValueError as err:
            parser.error(str(err))
    table = markdown(records)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "scdl_probe.json", json.dumps(records, indent=1) + "\n")
        atomic_write(out / "scdl_probe.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
