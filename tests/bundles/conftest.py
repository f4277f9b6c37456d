"""Shared scaffolding of the bundle smoke tests: a tiny fake Synapse dataset, the config files of a
shipped bundle (``bundles/<method>_<dataset>/configs``, with or without ``scdl.json``), tiny
overrides, and :class:`monai.bundle.ConfigWorkflow` helpers (initialise, train, run, torchrun)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from scdl_monai import bundles

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
LOGGING_CONF = str(bundles.components_dir() / "logging.conf")
SYNAPSE_CLASSES = 14
FAKE_SHAPE = (24, 24, 20)
#: 2 labeled, 2 unlabeled, 2 validation (one per DDP rank), 1 test
DEFAULT_ROLES = ("training", "training", "unlabeled", "unlabeled", "validation", "test", "validation")

#: Tiny sizes for every bundle: 32³ patches on a 32³ protocol grid ("dhc"/"ga" resize the whole
#: volume to ``resize_grid``; "native" ignores it), 4 filters, no caching, batch 1 + 1, fp32.
TINY = {"n_filters": 4, "patch_size": [32, 32, 32], "resize_grid": [32, 32, 32], "num_workers": 0, "cache_rate": 0.0,
        "batch_size": 1, "unlabeled_batch_size": 1, "val_interval": 1, "amp": False}  # fmt: skip
#: SCDL block at a tiny size (the overlay's ``scdl_block`` ids exist only with ``scdl=True``).
SCDL_TINY = {"scdl_block#z_dim": 8, "scdl_block#num_proxy_samples": 3}
#: MagicNet family: 48³ patches of 16³ cubes (3×3×3), batch norm (a 16³ cube has one bottleneck
#: voxel, too few for the reference's InstanceNorm), location head width 32.
MAGICNET_TINY = {"patch_size": [48, 48, 48], "cube_size": 16, "location_hidden_features": 32, "network_def#norm": "batch"}


def tiny(method: str, scdl: bool = False, kind: str = "train") -> dict:
    """The tiny overrides of a composed bundle config (``kind="inference"``: network-related keys only)."""
    out = dict(TINY)
    if method in ("magicnet", "ga_magicnet"):
        out.update(MAGICNET_TINY)
    if scdl:
        out.update(SCDL_TINY)
    if kind == "inference":
        keep = {"n_filters", "patch_size", "resize_grid", "network_def#norm", "amp", *SCDL_TINY}
        out = {k: v for k, v in out.items() if k in keep} | {"num_workers": 0, "progress": False}
    return out


def write_nifti(path, array, dtype) -> str:
    """Write ``array`` as NIfTI with 1.5 x 1.5 x 2 mm spacing; returns the path as a string."""
    nib.save(nib.Nifti1Image(array.astype(dtype), np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
    return str(path)


def write_fake_synapse(root: Path, roles=DEFAULT_ROLES, metadata_method: str = "cps", seed: int = 0) -> Path:
    """Random images with one small box per organ (every class present) and a datalist.

    ``roles[i]`` names the datalist key(s) of case ``i``; ``"validation,test"`` puts the case in both.
    ``metadata_method`` picks the metadata.json of that bundle (its network I/O; the same with SCDL).
    """
    rng = np.random.default_rng(seed)
    entries: dict = {}
    for i, role in enumerate(roles):
        image = rng.normal(0, 100, FAKE_SHAPE)
        label = np.zeros(FAKE_SHAPE, dtype=np.uint8)
        for k in range(1, SYNAPSE_CLASSES):
            x, y, z = rng.integers(0, 18, 3)
            label[x : x + 5, y : y + 5, z : z + 2] = k
        item = {"image": write_nifti(root / f"img{i}.nii.gz", image, np.float32), "case_id": str(i)}
        if role != "unlabeled":
            item["label"] = write_nifti(root / f"lab{i}.nii.gz", label, np.uint8)
        for key in role.split(","):
            entries.setdefault(key, []).append(item)
    (root / "datalist.json").write_text(json.dumps(entries))
    (root / "metadata.json").write_text(json.dumps(bundles.build_metadata(metadata_method, "synapse")))
    return root


def config_files(kind, method, *overlays, dataset="synapse", scdl=False) -> list:
    """The ``--config_file`` list of a shipped bundle: ``configs/<kind>.json``, then ``overlays``, then ``scdl.json``.

    ``kind="evaluate"`` / ``"multi_gpu_train"``: ``train.json`` followed by that overlay (how
    ``--config_file "['configs/train.json','configs/evaluate.json']"`` reads them). ``overlays`` are
    file names in the bundle's ``configs/`` (e.g. ``"dhc_distdw_distdw.json"``); ``scdl=True`` adds
    ``scdl.json`` last.
    """
    configs = BUNDLES / bundles.bundle_name(method, dataset) / "configs"
    names = (["train.json"] if kind in ("evaluate", "multi_gpu_train") else []) + [f"{kind}.json", *overlays]
    names += ["scdl.json"] if scdl else []
    return [str(configs / n) for n in names]


def bundle_workflow(config_file, dataset, bundle_root, workflow_type="train", **overrides) -> ConfigWorkflow:
    """An initialised ConfigWorkflow on the fake dataset's metadata and the shared logging.conf."""
    wf = ConfigWorkflow(
        config_file=config_file,
        workflow_type=workflow_type,
        meta_file=str(dataset / "metadata.json"),
        logging_file=LOGGING_CONF,
        bundle_root=str(bundle_root),
        **overrides,
    )
    wf.initialize()
    return wf


def run_workflow(workflow: ConfigWorkflow) -> ConfigWorkflow:
    """``run()`` then ``finalize()``; returns the workflow."""
    workflow.run()
    workflow.finalize()
    return workflow


def run_train(config_file, dataset, bundle_root, run=True, on_first_iteration=None, **overrides) -> ConfigWorkflow:
    """Train on the fake dataset (one epoch and no resume unless overridden), asserting ``check_properties() == []``.

    ``on_first_iteration(engine)`` is called once at the first ``ITERATION_STARTED``; an override
    with value ``None`` removes that key from the overrides (keeps the config's default).
    """
    settings = {"dataset_dir": str(dataset), "train#trainer#max_epochs": 1, "resume_from": "", **overrides}
    wf = bundle_workflow(config_file, dataset, bundle_root, **{k: v for k, v in settings.items() if v is not None})
    assert wf.check_properties() == []
    if on_first_iteration is not None:
        seen = []

        def first(engine):
            if not seen:
                seen.append(True)
                on_first_iteration(engine)

        wf.parser.get_parsed_content("train#trainer").add_event_handler(Events.ITERATION_STARTED, first)
    return run_workflow(wf) if run else wf


def run_torchrun(config_files, dataset, bundle_root, overrides, timeout=180):
    """``torchrun --standalone --nproc_per_node=2 -m monai.bundle run`` (gloo on CPU) on the fake dataset.

    One retry on a time-out or failure: the rendezvous port can race with other torchrun jobs on the
    machine (an intermittent hang is therefore reported only when it happens twice in a row).
    Asserts success and returns the completed process.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "--config_file", json.dumps(list(config_files)), "--meta_file", str(dataset / "metadata.json"),
           "--logging_file", LOGGING_CONF, "--bundle_root", str(bundle_root),
           "--dataset_dir", str(dataset)]  # fmt: skip
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value) if isinstance(value, bool) else json.dumps(value)]  # fire: True/False
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = None
    for _ in range(2):
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=bundle_root)
        except subprocess.TimeoutExpired:
            continue
        if result.returncode == 0:
            break
    assert result is not None, f"torchrun timed out twice ({timeout} s each): {' '.join(cmd)}"
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    return result
