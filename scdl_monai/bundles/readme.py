"""``docs/README.md`` and ``docs/data_license.txt`` of a bundle: exact commands, configuration, data terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scdl_monai.bundles.catalog import _VNET_ONLY, DEFAULT_BACKBONE, METHOD_PROTOCOLS, NO_SCDL, scdl_available
from scdl_monai.bundles.compose import _method_chain, export_network_id
from scdl_monai.bundles.descriptions import _DATASET_TEXT, _METHOD_TEXT, _PREPROCESSING_TEXT
from scdl_monai.data.datasets import get_dataset

__all__: list[str] = []


def _sliding_window_text(train: Mapping[str, Any]) -> str:
    """README paragraph on the sliding window: the composed ``sw_overlap`` / ``sw_fusion`` values."""
    overlap = train["sw_overlap"]
    if isinstance(overlap, str):
        shown = overlap.lstrip("$").strip("[]").replace(" / ", "/")
    else:
        shown = ", ".join(str(o) for o in (overlap if isinstance(overlap, (list, tuple)) else [overlap]))
    fusion = train["sw_fusion"]
    how = (
        "each window is turned into class probabilities (softmax) and the probabilities are averaged"
        if fusion == "probabilities"
        else "the windows' logits are averaged"
    )
    return (
        f"Sliding window (validation, evaluation, inference): window = `patch_size`, overlap "
        f"`sw_overlap` = ({shown}) per axis (x, y, z), uniform weights; {how} (`sw_fusion` = "
        f"`{fusion}`). These are the reference test script's values (scdl_monai `docs/fidelity.md`); "
        "`--sw_fusion logits` averages logits instead, `--sw_overlap 0.5` sets one overlap for all axes.\n"
    )


def _component_readmes(method: str, scdl: bool, root: Path) -> str:
    """The training-configuration sections of the method (its base method's first) and of SCDL."""
    paths = [root / "methods" / m / "README.md" for m in _method_chain(method)]
    if scdl:
        paths.append(root / "scdl" / "README.md")
    return "\n".join(p.read_text().strip() + "\n" for p in paths if p.is_file())


def _files(*names: str) -> str:
    """A ``--config_file`` argument: one file as is, several as MONAI's list syntax."""
    return names[0] if len(names) == 1 else '"[' + ",".join(f"'{n}'" for n in names) + ']"'


def _readme(
    method: str,
    dataset: str,
    backbone: str,
    name: str,
    meta: dict,
    protocol: str,
    train: Mapping[str, Any],
    root: Path,
    extras: Sequence[Path] = (),
) -> str:
    """The bundle's ``docs/README.md``; values quoted from the composed ``train`` config where they vary."""
    spec = get_dataset(dataset)
    mt, dt = _METHOD_TEXT[method], _DATASET_TEXT[dataset]
    scdl = scdl_available(method, backbone)
    title = mt["title"]
    export_id = export_network_id()
    classes = "\n".join(f"| {i} | {n} |" for i, n in enumerate(spec.class_names))
    semi = method != "supervised"
    unlabeled_line = (
        "- `unlabeled`: image-only entries, the unlabeled stream (cycled; an epoch has as many iterations as "
        "the unlabeled loader has batches, as in the reference code).\n"
        if semi
        else "- `unlabeled`: ignored by this method.\n"
    )
    refs = "\n".join(f"- {r}" for r in meta["references"])
    patch = list(train["patch_size"])
    patch_text = "x".join(str(p) for p in patch)
    preprocessing = _PREPROCESSING_TEXT[protocol].format(patch=patch_text)
    sliding = _sliding_window_text(train)
    defaults = {"backbone": DEFAULT_BACKBONE, "protocol": METHOD_PROTOCOLS[method]}
    given = {"backbone": backbone, "protocol": protocol}
    flags = "".join(f" --{k} {v}" for k, v in given.items() if v != defaults[k])
    length = "--max_iterations 1000" if "max_iterations" in train else "--max_epochs 100"
    swap = " --network_def#name unet" if method not in _VNET_ONLY else ""
    method_text = _component_readmes(method, scdl, root)
    data = f"--dataset_dir /path/to/{dataset}"
    t, t_s = _files("configs/train.json"), _files("configs/train.json", "configs/scdl.json")
    i, i_s = _files("configs/inference.json"), _files("configs/inference.json", "configs/scdl.json")
    ev, ev_s = _files("configs/train.json", "configs/evaluate.json"), _files("configs/train.json", "configs/evaluate.json", "configs/scdl.json")
    mg, mg_s = _files("configs/train.json", "configs/multi_gpu_train.json"), _files("configs/train.json", "configs/multi_gpu_train.json", "configs/scdl.json")
    extra_text = ""
    if extras:
        names = ", ".join(f"`configs/{p.name}`" for p in extras)
        extra_text = f"\nExtra overlays shipped with this method (see above): {names}.\n"

    def both(baseline: str, with_scdl: str) -> str:
        return baseline + (f"\n# with SCDL\n{with_scdl}" if scdl else "")

    if scdl:
        variants = f"""This bundle runs two variants:

| variant | config files |
|---|---|
| {title} | `configs/train.json` |
| {title} + SCDL | `configs/train.json` + `configs/scdl.json` |

`configs/scdl.json` is one overlay for training, evaluation, multi-GPU training and inference: add
it last to any `--config_file` list below. It wraps the baseline's networks, method and optimizer
by reference (`network_a_def`, `network_b_def`, `scdl_method_def`, `optimizer`) and changes
nothing else. Both variants write to `models/` and `eval/`: train each in its own copy of this
folder (or with its own `--bundle_root`), and evaluate or infer with the files it was trained with.
"""
    elif method in NO_SCDL:
        variants = f"This bundle has no `configs/scdl.json` (the SCDL plug-in): {NO_SCDL[method]}.\n"
    elif semi:
        variants = "`configs/scdl.json` (the SCDL plug-in) needs the VNet backbone: this bundle has none.\n"
    else:
        variants = "SCDL plugs into the semi-supervised bundles only: this bundle has no `configs/scdl.json`.\n"
    if method in ("magicnet", "ga_magicnet"):
        multi_gpu = (
            "Multi-GPU training is not supported for the MagicNet family (`configs/multi_gpu_train.json` is "
            "kept for uniformity and stops with that message).\n"
        )
    else:
        multi_gpu = f"""Multi-GPU training (DDP; backend gloo without CUDA):

```bash
{both(f"torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run --config_file {mg} {data}",
      f"torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run --config_file {mg_s} {data}")}
```
"""
    ct = "--input_files \"['/path/to/ct.nii.gz']\" --output_dir /path/to/out --sw_output_device cpu"
    infer = both(f"python -m monai.bundle run --config_file {i} {ct}", f"python -m monai.bundle run --config_file {i_s} {ct}")
    export_files = _files("configs/inference.json", "configs/scdl.json") if scdl else "configs/inference.json"
    torchscript = ""
    if scdl:
        torchscript = """
With `configs/scdl.json` the exported network holds the whole prior path (SCDL proxies, projector,
injection convolutions; eval mode: proxy means, no token noise).
"""
    return f"""# {name}: {title} on {dataset} ({backbone})

## Model Overview

{meta['description']}

{variants}
The configs are plain MONAI bundle JSON, meant to be read and edited: change any value in place or
override it on the command line (`--<id> <value>`, e.g. `--n_filters 16`). All code they run lives in
the installed `scdl_monai` package and is referenced by full dotted paths, so the bundle runs from
any directory; it needs no `scripts/` folder and no `PYTHONPATH`. (scdl_monai's maintainers generate
the shipped copy with `python -m scdl_monai.cli.bundle_tool write --method {method} --dataset {dataset}{flags} --out DIR`.)

**Security:** bundle configs execute code (`$` expressions and `_target_` imports, MONAI prints a
warning). Only run bundles from sources you trust, exactly as you would only run trusted scripts.

No trained weights are shipped: `models/` is empty until you train.

## Data

{dt['title']}. Source: {dt['source']}. The data is **not** included and may not be redistributed
with this bundle; see `docs/data_license.txt`.

Expected release layout (auto-detected): `{dt['layout']}`. Build the datalist JSON from the
official split shipped with scdl_monai, then point the bundle at it:

```bash
python -m scdl_monai.data datalist --dataset {dataset} --root /path/to/{dataset} --labeled {dt['labeled']} \\
    --out /path/to/{dataset}/datalist.json
python -m scdl_monai.data verify --datalist /path/to/{dataset}/datalist.json --dataset {dataset}
```

Datalist keys used by the configs:
- `training`: labeled image/label pairs (the labeled stream).
{unlabeled_line}- `validation`: model selection during training (best mean foreground Dice -> `models/model.pt`).
- `test`: `configs/evaluate.json` (`evaluate_split`).

Classes:

| id | class |
|---|---|
{classes}

## Training configuration

{preprocessing}
{sliding}
{method_text}{extra_text}
Every loss term is logged by `StatsHandler` and TensorBoard (`eval/`). Handlers have ids (e.g.
`train#lr_handler`, `train#validation_handler`, `validate#best_model_saver`); the lists
`train#handlers` / `validate#handlers` copy them (`%id`): configure or switch one off by its id,
e.g. `--train#tensorboard_handler#_disabled_ true`.

## MONAI Bundle Commands

Run from the bundle folder, or from anywhere with absolute paths and `--bundle_root /path/to/{name}`.
Install first: `pip install scdl_monai` (or `bash scripts/bootstrap.sh` in the repository).

Train:

```bash
{both(f"python -m monai.bundle run --config_file {t} {data}", f"python -m monai.bundle run --config_file {t_s} {data}")}
```

Override parameters (any config id), e.g. a shorter run{', another backbone' if swap else ''}, a smaller network:

```bash
python -m monai.bundle run --config_file {t} {data} \\
    {length}{swap} --n_filters 8
```

Precision and memory format are chosen in one place, the top-level keys `precision` and
`channels_last` (`scdl_monai.engines.precision.PrecisionPolicy`), used by the trainer, by validation and
evaluation and by `configs/inference.json` (sliding-window inference through
`scdl_monai.engines.policy_inferer.PolicyInferer`; overlapping windows are stitched in fp32): `fp32`, `bf16`
autocast (CPUs with AVX512-BF16/AMX, Ampere or newer GPUs) or `fp16` autocast with loss scaling
(CUDA), and `--channels_last true` for channels-last 3-D networks and inputs. Losses, class-weight
trackers, SCDL statistics and metrics stay in fp32. A mode the device cannot run falls back to
fp32 with the reason in the log. The default follows `amp` (true when CUDA is available): fp16 on
CUDA, fp32 on CPU; `--amp false` forces fp32 unless `--precision` is given. The GA-CPS and MagicNet
bundles set `amp` false: their reference runs are fp32. The fast path on a
bf16-capable CPU:

```bash
python -m monai.bundle run --config_file {t} {data} --precision bf16 --channels_last true
python -m monai.bundle run --config_file {i} --input_files "['/path/to/ct.nii.gz']" --precision bf16 --channels_last true
```

Resume from the newest full-state checkpoint in `models/` (method with its buffers, every optimizer
and LR scheduler, AMP scaler, trainer epoch/iteration and unlabeled-stream position):

```bash
python -m monai.bundle run --config_file {t} {data} --resume true
```

{multi_gpu}
Experiment tracking with MLflow (needs `pip install mlflow`):

```bash
python -m monai.bundle run --config_file {t} {data} --tracking mlflow
```

Evaluate `models/model.pt` on the `test` split: Dice per class on the protocol grid
(`eval/metrics.csv`, `eval/val_mean_dice_raw.csv`), predictions in the original image space
(`eval/predictions/`) and on the protocol grid (`eval/predictions_grid/`), then the project metrics
(Dice/ASD/HD95 in mm, empty-class policy; for a published table instead, score
`eval/predictions_grid` with `--mode reference --reference <dhc|genericssl|ga|magicnet> --grid "[160,160,80]"`,
see scdl_monai `docs/evaluation.md`):

```bash
{both(f"python -m monai.bundle run --config_file {ev} {data}", f"python -m monai.bundle run --config_file {ev_s} {data}")}
python -m scdl_monai.evaluation evaluate --pred_dir eval/predictions --label_dir /path/to/labels \\
    --strict False --out_dir eval/metrics --dataset {dataset}
```

Inference on any CT (NIfTI file or DICOM folder) -> label map NIfTI in the input's original space
and orientation:

```bash
python -m scdl_monai.cli.inference --bundle . --input /path/to/ct.nii.gz --output /path/to/ct_seg.nii.gz
{infer}
```

Export TorchScript (by tracing) and check the network against the metadata:

```bash
python -m monai.bundle ckpt_export {export_id} --filepath models/model.ts --ckpt_file models/model.pt \\
    --meta_file configs/metadata.json --config_file {export_files} \\
    --use_trace True --input_shape "[1, 1, {', '.join(str(p) for p in patch)}]"

python -m monai.bundle verify_net_in_out {export_id} --meta_file configs/metadata.json \\
    --config_file {export_files} --n 2 --device cpu
python -m monai.bundle verify_metadata --meta_file configs/metadata.json \\
    --filepath "$(python -c 'import scdl_monai.bundles as b; print(b.schema_path())')"
```
{torchscript}
Inference can run on the TorchScript file instead of `models/model.pt` (the checkpoint loader is
then switched off by its id):

```bash
python -m monai.bundle run --config_file {i} --input_files "['/path/to/ct.nii.gz']" \\
    --network "\\$torch.jit.load('models/model.ts')" --checkpoint_loader#_disabled_ true
```

`verify_metadata` uses scdl_monai's vendored reconstruction of the 20240725 metadata schema (the
official file is a download that is not available offline).

## References

{refs}

## License

Code and configs: Apache License 2.0 (`LICENSE`). Data: see `docs/data_license.txt`.
"""


def _data_license(dataset: str) -> str:
    dt = _DATASET_TEXT[dataset]
    return f"""Third-party data used with this bundle
======================================

{dt['title']}
Source: {dt['source']}.

This bundle contains NO images, labels or weights trained on them. The dataset is distributed
only by its owners under their own terms; obtain it from the source above and follow those terms
(registration, permitted use, citation). Do not redistribute the data, or derived copies of it,
with this bundle or elsewhere unless those terms allow it. Check the current terms at the source
before use: they are the owners', not ours, and may change.

If you train this bundle and share the resulting weights, check whether the dataset's terms permit
sharing models trained on it.
"""
