"""Demo: semi-supervised DHC + SCDL on the real CT samples shipped in the repository, end to end.

``python -m scdl_monai.cli.demo`` (README command 1) writes the DHC bundle with the native protocol,
bakes its ``configs/scdl.json`` into it (:func:`scdl_monai.bundles.bake_overlay`; ``--scdl false``
keeps the baseline, ``--method`` picks another baseline)
(``write_bundle("cps", "synapse", protocol="native")``: clinical units), trains it
through ``monai.bundle`` (``ConfigWorkflow`` on the bundle's own ``configs/train.json``, with
small overrides so it finishes in a few minutes on 2 CPU cores), segments the evaluation CT with
the bundle's ``configs/inference.json`` (:func:`scdl_monai.cli.inference.predict`, prediction in the
input's original grid), scores it with :mod:`scdl_monai.evaluation` (Dice / ASD / HD95 per class
in mm, project empty-class policy) and writes::

    outputs/demo/
      metrics/summary.csv        per-class metrics (also cases.csv, summary.md, summary.png)
      prediction/case_a_top30_seg.nii.gz
      overlay.png                one axial slice: CT, reference labels, prediction
      bundle/                    the bundle that was trained (configs, docs, models/model.pt)
      data/datalist.json         the datalist the bundle read

Which sample plays which role, and why (``data/totalsegmentator-samples``, README there):

* **labeled** — ``case_a_abdomen_ct_3mm/example_ct.nii.gz`` with
  ``derived/example_seg_fast_force_split_synapse13.nii.gz`` (TotalSegmentator *fast* model,
  remapped to Synapse-13). It is the only abdominal CT with organ labels, so it must be the
  labeled stream. Its top 30 slices hold almost every organ voxel (e.g. 95 % of the liver), so
  holding those slices out would leave nothing to learn from.
* **unlabeled** — ``unlabeled_ct_crops/aorta_report_ct_cropped.nii.gz`` (CTA) and
  ``pulmonary_report_ct_cropped.nii.gz`` (chest CT): real CT of other patients, no labels — what
  the unlabeled stream is for. They are LPS at 1.5 mm; the bundle's RAS + spacing transforms
  bring them to the labeled case's frame.
* **evaluation** — ``case_a_top30_slices/example_ct_sm.nii.gz`` with
  ``derived/example_seg_synapse13.nii.gz``. These are slices 82–111 **of the same patient** (and
  voxels seen in training), so this is NOT an independent test: it checks that the pipeline
  learns and that inference, inversion to the original grid and evaluation fit together. The
  reference labels come from TotalSegmentator's *normal* model — a different labeller than the
  training labels — so the score is not a comparison with the training targets themselves. Both
  label sets are model predictions (silver standard). The only other labeled sample is an MR
  volume, a different modality, which would not be a meaningful test of a CT model either.
* **model selection** — validation during training runs on the labeled case (training data), so
  the evaluation labels are never used before the final scoring.

Settings (all bundle overrides, printed at start): 3 mm spacing (the labeled case's own, instead of
the protocol's 1.5×1.5×2 mm, to keep volumes small), patch 64×64×32, VNets with 4 base filters,
two labeled crops + one unlabeled crop per iteration, 80 epochs (160 iterations) at learning rate
0.1 (the bundle's 0.03 belongs to its 300-epoch schedule; on this short run 0.03 left every organ at
Dice 0 while 0.1 learns the liver), one torch thread. Expect low Dice on small
organs: a handful of CPU minutes on one patient is a smoke test, not a trained model.

Why DHC + SCDL: of the combinations tried with these settings (80 epochs, 2 CPU cores), DHC + SCDL
segmented the liver (Dice 75.2 on the evaluation slices, 316 s), while CPS + SCDL and CPS alone
segmented no organ (Dice 0 everywhere). No combination segmented a second organ in this budget.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scdl_monai.data.utils import as_flag, run_fire

__all__ = ["DEMO_CASES", "default_samples_dir", "prepare_data", "run_demo", "save_overlay", "main"]

#: Sample files used by the demo, relative to ``data/totalsegmentator-samples``.
DEMO_CASES: dict[str, Any] = {
    "labeled": {
        "image": "case_a_abdomen_ct_3mm/example_ct.nii.gz",
        "label": "case_a_abdomen_ct_3mm/derived/example_seg_fast_force_split_synapse13.nii.gz",
        "case_id": "case_a",
    },
    "unlabeled": [
        {"image": "unlabeled_ct_crops/aorta_report_ct_cropped.nii.gz", "case_id": "aorta_cta"},
        {"image": "unlabeled_ct_crops/pulmonary_report_ct_cropped.nii.gz", "case_id": "chest_ct"},
    ],
    "evaluation": {
        "image": "case_a_top30_slices/example_ct_sm.nii.gz",
        "label": "case_a_top30_slices/derived/example_seg_synapse13.nii.gz",
        "case_id": "case_a_top30",
    },
}

#: Bundle overrides of the demo (see the module docstring for why each differs from the bundle).
#: The baseline the demo trains with SCDL (``configs/scdl.json``).
DEMO_METHOD = "dhc"
DEMO_OVERRIDES: dict[str, Any] = {
    "pixdim": [3.0, 3.0, 3.0],
    "patch_size": [64, 64, 32],
    "n_filters": 4,
    "num_samples": 2,
    "batch_size": 1,
    "unlabeled_batch_size": 1,
    "num_workers": 0,
    "cache_rate": 1.0,
    "learning_rate": 0.1,
    "sw_batch_size": 4,
    "device": "cpu",
}


def default_samples_dir() -> Path:
    """``data/totalsegmentator-samples`` of the repository checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "data" / "totalsegmentator-samples"


def prepare_data(samples: str | Path, out_dir: str | Path) -> Path:
    """Write the demo datalist (absolute paths into ``samples``); returns its path.

    Keys: ``training`` = ``validation`` = the labeled case (model selection on training data),
    ``unlabeled`` = the two crops, ``test`` = the evaluation case.

    Raises:
        FileNotFoundError: a sample file is missing (naming it).
    """
    samples, out = Path(samples), Path(out_dir)

    def entry(item: dict) -> dict:
        e = {"case_id": item["case_id"]}
        for key in ("image", "label"):
            if key in item:
                path = samples / item[key]
                if not path.is_file():
                    raise FileNotFoundError(f"demo sample missing: {path} (expected the repository's data/totalsegmentator-samples).")
                e[key] = str(path.resolve())
        return e

    labeled = entry(DEMO_CASES["labeled"])
    datalist = {
        "training": [labeled],
        "unlabeled": [entry(u) for u in DEMO_CASES["unlabeled"]],
        "validation": [labeled],
        "test": [entry(DEMO_CASES["evaluation"])],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "datalist.json"
    tmp = out / ".datalist.json.tmp"
    tmp.write_text(json.dumps(datalist, indent=2))
    tmp.replace(path)
    return path


def _radiological(slice_xy: np.ndarray) -> np.ndarray:
    """(x, y) RAS slice -> (rows, cols) image with anterior at the top and patient right on the left."""
    return np.flipud(slice_xy.T)[:, ::-1]


def save_overlay(
    image: str | Path, label: str | Path, pred: str | Path, path: str | Path, class_names=None, model: str = "model"
) -> Path:
    """PNG of the axial slice with the most reference foreground: CT, reference, prediction.

    Returns:
        the PNG path (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    ct = np.asanyarray(nib.load(str(image)).dataobj).astype(np.float32)
    ref = np.asanyarray(nib.load(str(label)).dataobj).astype(np.int64)
    prd = np.asanyarray(nib.load(str(pred)).dataobj).astype(np.int64)
    z = int(np.argmax((ref > 0).sum(axis=(0, 1))))
    window = np.clip((ct[:, :, z] + 125.0) / 400.0, 0.0, 1.0)
    n = int(max(ref.max(), prd.max(), 1))
    cmap = plt.get_cmap("tab20", max(n + 1, 2))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (title, lab) in zip(axes, (("CT", None), ("reference (TotalSegmentator normal)", ref), (f"{model} prediction", prd))):
        # arrays are (x, y) in RAS voxel order (x toward the patient's right): show the radiological
        # view, anterior up and the patient's right on the image's left
        ax.imshow(_radiological(window), cmap="gray")
        if lab is not None:
            sl = _radiological(lab[:, :, z]).astype(float)
            ax.imshow(np.ma.masked_where(sl == 0, sl), cmap=cmap, vmin=0, vmax=max(n, 1), alpha=0.55, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"axial slice z={z} (demo: same patient as training, not an independent test)", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp.{out.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out


def run_demo(
    out: str | Path = "outputs/demo",
    epochs: int = 80,
    val_interval: int = 20,
    samples: str | Path | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    verbose: bool = True,
    threads: int = 1,
    method: str = DEMO_METHOD,
    scdl: bool = True,
) -> dict[str, Path]:
    """Run the whole demo; returns the output paths (``summary``, ``cases``, ``prediction``, ``overlay``, ``bundle``).

    Args:
        out: output folder (created; a previous demo there is replaced).
        epochs: training epochs (each = one pass over the 2 unlabeled volumes).
        val_interval: validate (on the labeled case) every this many epochs; best -> ``model.pt``.
        samples: the samples folder (default: the repository's ``data/totalsegmentator-samples``).
        seed: ``monai.utils.set_determinism`` seed (the bundle's ``seed``).
        overrides: extra bundle overrides (id -> value).
        verbose: print progress and the metrics table.
        threads: torch intra-op threads (1 is fastest when other processes share the cores).
        method: the semi-supervised baseline bundle to train (``<method>_synapse``, native protocol).
        scdl: train the bundle with its ``configs/scdl.json`` (baked into the trained bundle, so the
            plain inference command rebuilds the SCDL network).
    """
    import torch
    from monai.bundle import ConfigWorkflow

    from scdl_monai.bundles import bake_overlay, write_bundle
    from scdl_monai.evaluation.metrics import evaluate_folder
    from scdl_monai.cli.inference import predict

    if int(epochs) < 1 or int(val_interval) < 1:
        raise ValueError(f"epochs and val_interval must be >= 1, got epochs={epochs}, val_interval={val_interval}.")
    say = print if verbose else (lambda *a, **k: None)
    # one intra-op thread: on a shared 2-core machine more threads spin-wait and run several times slower
    torch.set_num_threads(int(threads))
    start = time.time()
    out = Path(out).resolve()
    samples = Path(samples) if samples is not None else default_samples_dir()
    for sub in ("bundle", "prediction", "metrics", "labels"):
        shutil.rmtree(out / sub, ignore_errors=True)
    datalist = prepare_data(samples, out / "data")
    bundle = write_bundle(method, "synapse", out / "bundle", protocol="native")  # clinical units, mm metrics
    if scdl:
        bake_overlay(bundle, "scdl.json")  # the trained bundle IS the SCDL variant: no overlay to remember
    label = f"{method}{' + SCDL' if scdl else ''}"
    params = {
        **DEMO_OVERRIDES,
        "bundle_root": str(bundle),
        "dataset_dir": str(out / "data"),
        "datalist": str(datalist),
        "seed": int(seed),
        "val_interval": int(val_interval),
        "train#trainer#max_epochs": int(epochs),
        **(overrides or {}),
    }
    say(f"scdl_monai demo: {label} on the real TotalSegmentator CT samples")
    say("  labeled   : case A abdomen CT + TotalSegmentator-fast labels (Synapse-13)")
    say("  unlabeled : CTA crop + chest CT crop (other patients, no labels)")
    say("  evaluation: case A top 30 slices + TotalSegmentator-normal labels -- SAME patient as training,")
    say("              not an independent test; it checks train -> infer -> evaluate end to end")
    say("  selection : validation on the labeled case only; the evaluation labels are used once, at the end")
    say("  why       : the samples hold one labeled abdominal CT patient (see scdl_monai/cli/demo.py docstring)")
    say("  overrides : " + ", ".join(f"{k}={v}" for k, v in params.items() if k in DEMO_OVERRIDES or k.startswith("train#")))

    t0 = time.time()
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf") if verbose else False,
        workflow_type="train",
        **params,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    say(f"trained {epochs} epochs in {time.time() - t0:.0f} s -> {bundle / 'models' / 'model.pt'}")

    eval_case = DEMO_CASES["evaluation"]
    case_id = eval_case["case_id"]
    prediction = predict(
        samples / eval_case["image"],
        bundle,
        out / "prediction" / f"{case_id}_seg.nii.gz",
        device="cpu",
        progress=verbose,
    )[0]  # no overrides: the training run recorded its settings in the bundle's inference config
    labels = out / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(samples / eval_case["label"], labels / f"{case_id}.nii.gz")
    result = evaluate_folder(out / "prediction", labels, dataset="synapse", out_dir=out / "metrics", plot=True)
    overlay = save_overlay(
        samples / eval_case["image"], labels / f"{case_id}.nii.gz", prediction, out / "overlay.png", model=label
    )

    paths = {
        "summary": result.paths["summary"],
        "cases": result.paths["cases"],
        "prediction": prediction,
        "overlay": overlay,
        "bundle": bundle,
    }
    if verbose:
        print(Path(result.paths["markdown"]).read_text())
        print(f"demo finished in {time.time() - start:.0f} s. Outputs:")
        for key, value in paths.items():
            print(f"  {key:<10} {value}")
        print("Segment your own CT (NIfTI file or DICOM folder) with the trained bundle, as it is:")
        print(f"  python -m scdl_monai.cli.inference --input <your CT> --bundle {bundle} --output seg.nii.gz")
        print(f"  python -m monai.bundle run --config_file {bundle}/configs/inference.json --bundle_root {bundle} "
              "--dataset_dir <folder of NIfTI CTs> --output_dir <folder>")
    return paths


def _cli(
    out: str = "outputs/demo",
    epochs: int = 80,
    val_interval: int = 20,
    seed: int = 0,
    threads: int = 1,
    method: str = DEMO_METHOD,
    scdl: bool = True,
) -> None:
    """Train a baseline + SCDL (default DHC + SCDL) on the shipped CT samples, evaluate, write metrics CSV, prediction NIfTI and PNG overlay.

    Args:
        out: output folder.
        epochs: training epochs (2 iterations each).
        val_interval: validate on the labeled case every N epochs (best -> model.pt).
        seed: random seed.
        threads: torch intra-op threads.
    """
    run_demo(out, epochs, val_interval, seed=seed, threads=threads, method=method, scdl=as_flag(scdl, "scdl"))


def main(argv: list[str] | None = None) -> int:
    """``python -m scdl_monai.cli.demo [--out DIR] [--epochs N] [--val_interval N]``; returns the exit status."""
    return run_fire(_cli, argv, "scdl_monai.cli.demo", errors=(ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
