"""The four shipped bundles (supervised/CPS x Synapse/AMOS) end to end on synthetic NIfTI data.

For every bundle, in a temporary copy: ``ConfigWorkflow`` train (``check_properties() == []``,
run, finalize), train + evaluate overlay, inference (standalone config); then MONAI's
``verify_metadata`` (vendored schema), ``verify_net_in_out`` and ``ckpt_export`` (TorchScript by tracing)
plus our own spatial-shape check (``verify_net_in_out`` checks channels and dtype only,
BUNDLES.md §6). Tiny overrides: 1 epoch, cache_rate 0, patch 32^3, n_filters 4.
"""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from scdl_monai.bundles import SHIPPED, bundle_name, schema_path
from scdl_monai.data.phantom import generate_phantom

from ..conftest import REPO_ROOT

TINY = {
    "train#trainer#max_epochs": 1,
    "cache_rate": 0.0,
    "num_workers": 0,
    "patch_size": [32, 32, 32],
    "n_filters": 4,
    "batch_size": 1,
    "unlabeled_batch_size": 1,
    "val_interval": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """7 phantom cases of 32^3 (Synapse ids, valid for AMOS's 16 classes too): 2 labeled, 2 unlabeled, 2 val, 1 test."""
    root = tmp_path_factory.mktemp("phantom")
    datalist = generate_phantom(root, num_cases=7, shape=(32, 32, 32), seed=0, labeled_fraction=0.5, num_validation=2, num_test=1)
    return datalist


def _copy_bundle(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(REPO_ROOT / "bundles" / name, dst)
    return dst


def _workflow(bundle, configs, workflow_type, **overrides):
    files = [str(bundle / "configs" / f"{c}.json") for c in configs]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **overrides,
    )


@pytest.mark.parametrize("method,dataset", SHIPPED)
def test_train_evaluate_infer_verify_export(method, dataset, phantom, tmp_path):
    bundle = _copy_bundle(bundle_name(method, dataset), tmp_path)
    data = {"dataset_dir": str(phantom.parent), "datalist": str(phantom)}
    num_classes = 14 if dataset == "synapse" else 16

    # --- train: properties, run, finalize
    train = _workflow(bundle, ["train"], "train", **TINY, **data)
    train.initialize()
    assert train.check_properties() == []
    train.run()
    train.finalize()
    models = bundle / "models"
    assert (models / "model.pt").is_file()  # best key metric (validation every epoch)
    assert (models / "checkpoint_final.pt").is_file()
    state = torch.load(models / "checkpoint_final.pt", weights_only=True)
    expected = {"method", "optimizer", "lr_scheduler", "scaler", "trainer"}
    if method == "cps":
        expected |= {"optimizer_b", "lr_scheduler_b"}
    assert expected <= set(state)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"]  # one full epoch
    assert not any(k.startswith("module.") or ".module." in k for k in state["method"])

    # --- evaluate overlay: loads model.pt, writes metrics and inverted predictions of the test split
    evaluate = _workflow(bundle, ["train", "evaluate"], "train", **TINY, **data, output_dir=str(tmp_path / "eval"))
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    test_case = json.loads(phantom.read_text())["test"][0]
    pred_file = tmp_path / "eval" / "predictions" / f"{test_case['case_id']}_seg.nii.gz"
    assert pred_file.is_file() and (tmp_path / "eval" / "metrics.csv").is_file()
    raw = (tmp_path / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(raw) == 2 and len(raw[0].split(",")) == 1 + (num_classes - 1) + 1  # filename, classes 1..C-1, mean
    ref = nib.load(test_case["image"])
    pred = nib.load(str(pred_file))
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    assert int(np.asanyarray(pred.dataobj).max()) < num_classes

    # --- inference (standalone config)
    infer = _workflow(
        bundle,
        ["inference"],
        "inference",
        n_filters=4,
        patch_size=[32, 32, 32],
        device="cpu",
        num_workers=0,
        progress=False,
        input_files=[test_case["image"]],
        output_dir=str(tmp_path / "infer"),
    )
    infer.initialize()
    assert infer.check_properties() == []
    infer.run()
    infer.finalize()
    out = nib.load(str(tmp_path / "infer" / f"{test_case['case_id']}_seg.nii.gz"))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    # same weights, same transforms: the evaluate overlay and the inference config agree voxel for voxel
    assert np.array_equal(np.asanyarray(out.dataobj), np.asanyarray(pred.dataobj))

    # --- metadata / network checks / export
    meta = str(bundle / "configs" / "metadata.json")
    config = str(bundle / "configs" / "inference.json")
    verify_metadata(meta_file=meta, filepath=str(schema_path()))
    small = {"n_filters": 4, "patch_size": [32, 32, 32]}
    for net_id in ("network_def", "inference_network_def"):
        verify_net_in_out(net_id=net_id, meta_file=meta, config_file=config, n=2, device="cpu", **small)
    parser = ConfigParser()
    parser.read_config(config)
    parser.read_meta(meta)
    parser.update(small)
    net = parser.get_parsed_content("inference_network_def").eval()
    net.load_state_dict(torch.load(models / "model.pt", weights_only=True))
    for n in (2, 3):  # "16*n" per axis: output keeps the input's spatial shape
        x = torch.rand(1, 1, 16 * n, 16 * n, 32)
        with torch.no_grad():
            assert net(x).shape == (1, num_classes, 16 * n, 16 * n, 32)
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="inference_network_def",
        filepath=str(ts),
        ckpt_file=str(models / "model.pt"),
        meta_file=meta,
        config_file=config,
        use_trace=True,  # the project VNet's decode() is not scriptable (try/except); tracing is
        input_shape=[1, 1, 32, 32, 32],
        **small,
    )
    scripted = torch.jit.load(str(ts))
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)
        # the traced module is not tied to the trace shape (no shape-dependent control flow)
        assert scripted(torch.rand(1, 1, 48, 32, 16)).shape == (1, num_classes, 48, 32, 16)


def test_verify_metadata_rejects_a_broken_metadata(tmp_path):
    meta = json.loads((REPO_ROOT / "bundles" / "cps_synapse" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="outputs"):
        verify_metadata(meta_file=str(bad), filepath=str(schema_path()))
