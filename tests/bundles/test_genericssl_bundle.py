"""Smoke tests of the GenericSSL / A&D bundle (``bundles/genericssl_*``, "dhc" protocol).

Configs are composed exactly as the shipped ``genericssl_synapse`` bundle (``scdl_monai.bundles``) and run
with MONAI's ``ConfigWorkflow`` on CPU with a tiny DiffVNet on fake NIfTI data: train (StrongAug in
both training pipelines, μ ramp, DiffDW state in the checkpoint), evaluate, inference with D_θ, the
derived AMOS composition (C = 16), and two-process DDP training with torchrun (gloo).
"""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scdl_monai.data.strong_aug import StrongAugd
from scdl_monai.methods.genericssl import GenericSSL
from scdl_monai.networks.diffvnet import DiffVNet

from .conftest import bundle_workflow, config_files, run_torchrun, run_train, run_workflow, tiny, write_fake_synapse
from .conftest import FAKE_SHAPE as SHAPE
from .conftest import SYNAPSE_CLASSES as C

TINY = tiny("genericssl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(
        tmp_path_factory.mktemp("fake_synapse_genericssl"),
        roles=("training", "training", "unlabeled", "unlabeled", "validation", "validation,test"),
        metadata_method="genericssl",
    )


def files(kind, dataset="synapse"):
    return config_files(kind, "genericssl", dataset=dataset)


workflow = bundle_workflow


def test_genericssl_train_evaluate_inference(tmp_path, dataset):
    train = run_train(files("train"), dataset, tmp_path, run=False, **{**TINY, "class_weight_log_interval": 1})
    parser = train.parser
    method = parser.get_parsed_content("method")
    assert isinstance(method, GenericSSL) and isinstance(method.network, DiffVNet)
    assert method.unsup_weight_max == 10.0 and method.ema_momentum == 0.99 and not method.difficulty.normalize
    assert method.network.out_channels == C and parser.get_parsed_content("optimizer").param_groups[0]["lr"] == 0.01
    for key in ("train#preprocessing", "train#unlabeled_preprocessing"):  # StrongAug right after the crop
        names = [type(t).__name__ for t in parser.get_parsed_content(key).transforms]
        assert names.count("StrongAugd") == 1 and "Crop" in names[names.index("StrongAugd") - 1], names
    assert isinstance(parser.get_parsed_content("train#strong_aug"), StrongAugd)
    run_workflow(train)
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2  # epoch = the unlabeled loader's length (2 cases, batch 1)
    assert method.unsup_weight.item() == pytest.approx(10.0 * math.exp(-5.0), rel=1e-5)  # epoch 0: μ_max·e^-5
    out = trainer.state.output[0]
    assert all(math.isfinite(float(out[k])) for k in ("loss", "loss_deno", "loss_diff", "loss_u"))
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert {"method", "optimizer", "lr_scheduler", "trainer"} <= ckpt.keys()
    assert "difficulty.learn" in ckpt["method"] and "network.decoder_theta.head.weight" in ckpt["method"]
    assert not torch.equal(ckpt["method"]["difficulty.last_dice"], torch.full((C,), 1e-8))
    assert (tmp_path / "models" / "model.pt").exists()  # validated every epoch with D_θ
    events = EventAccumulator(str(tmp_path / "eval"))
    events.Reload()
    assert "class_weights/difficulty/pancreas" in events.Tags()["scalars"]  # DiffDW weights logged

    evaluate = run_workflow(workflow(files("evaluate"), dataset, tmp_path, dataset_dir=str(dataset), **TINY))
    assert 0.0 <= evaluate.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"] <= 1.0
    assert (tmp_path / "eval" / "metrics.csv").exists()
    assert len(list((tmp_path / "eval" / "predictions").glob("*.nii.gz"))) == 1

    image = json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]
    infer = workflow(files("inference"), dataset, tmp_path, workflow_type="infer", input_files=[image],
                     output_dir=str(tmp_path / "pred"), **tiny("genericssl", kind="inference"))  # fmt: skip
    network = infer.parser.get_parsed_content("network")
    assert isinstance(network, DiffVNet)
    run_workflow(infer)
    (pred_file,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(pred_file)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C
    # the inference network is D_θ of the saved DiffVNet
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in network.state_dict().items())


def test_amos_is_the_same_overlay_with_sixteen_classes(tmp_path, dataset):
    synapse = workflow(files("train"), dataset, tmp_path, dataset_dir=str(dataset), resume_from="", **TINY)
    amos = workflow(files("train", dataset="amos"), dataset, tmp_path, dataset_dir=str(dataset), resume_from="", **TINY)
    method = amos.parser.get_parsed_content("method")
    assert method.num_classes == 16 and method.network.out_channels == 16
    for key in ("learning_rate", "unsup_weight_max", "ema_momentum", "n_filters", "patch_size", "val_interval"):
        assert amos.parser.get_parsed_content(key) == synapse.parser.get_parsed_content(key), key
    assert amos.parser.get_parsed_content("train#trainer#max_epochs") == 300
    infer = workflow(files("inference", dataset="amos"), dataset, tmp_path, workflow_type="infer",
                     input_files=[], n_filters=4, num_workers=0)  # fmt: skip
    assert infer.parser.get_parsed_content("network").out_channels == 16


def test_genericssl_two_process_ddp(tmp_path, dataset):
    overrides = {**TINY, "train#trainer#max_epochs": 1, "resume_from": "", "val_interval": 1000}
    run_torchrun(files("multi_gpu_train"), dataset, tmp_path, overrides)
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert not any(k.startswith("module.") or ".module." in k or "_passes" in k for k in ckpt["method"])
    assert ckpt["trainer"]["iteration"] == 1  # one unlabeled case per rank -> one iteration per epoch
    assert "difficulty.weights" in ckpt["method"]
