"""Smoke tests of the SKCDF bundle (``bundles/skcdf_synapse``, "dhc" protocol) on fake NIfTI data.

The shipped configs run with MONAI's ``ConfigWorkflow`` on CPU with a tiny network: train (keep
rates from the labeled volumes, λ ramp, flips), evaluate, inference with D_u, and the ablation
switches as config keys. The bundle has no ``configs/scdl.json`` (``scdl_monai.bundles.NO_SCDL``).
"""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from scdl_monai.methods.skcdf import SKCDF
from scdl_monai.networks.skcdf import SKCDFNetwork

from .conftest import FAKE_SHAPE as SHAPE
from .conftest import SYNAPSE_CLASSES as C
from .conftest import bundle_workflow, config_files, run_train, run_workflow, tiny, write_fake_synapse

TINY = tiny("skcdf")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(
        tmp_path_factory.mktemp("fake_synapse_skcdf"),
        roles=("training", "training", "unlabeled", "unlabeled", "validation", "validation,test"),
        metadata_method="skcdf",
    )


def test_skcdf_train_evaluate_inference(tmp_path, dataset):
    train = run_train(config_files("train", "skcdf"), dataset, tmp_path, run=False, **TINY)
    parser = train.parser
    method = parser.get_parsed_content("method")
    assert isinstance(method, SKCDF) and isinstance(method.network, SKCDFNetwork)
    assert method.max_epochs == 1500 and method.ema_momentum == 0.99 and method.unsup_weight_max == 10.0
    assert parser.get_parsed_content("max_epochs") == 1501  # epochs 0..1500 (train_skcdf.py:213)
    assert parser.get_parsed_content("optimizer").param_groups[0]["lr"] == 0.3
    # keep rates from the two labeled volumes (4 requested: wrap-around), rarest class kept, r in (0, 1]
    rates = method.keep_rates
    assert rates.dtype == torch.float64 and rates.max().item() == 1.0 and rates[0].item() < 0.1
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert names.count("RandFlipd") == 2 and "Crop" in names[names.index("RandFlipd") - 1], names
    run_workflow(train)
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    assert method.unsup_weight.item() == pytest.approx(10.0 * math.exp(-5.0), rel=1e-5)  # λ at epoch 0
    out = trainer.state.output[0]
    assert all(math.isfinite(float(out[k])) for k in ("loss", "loss_sup", "loss_u"))
    ckpt = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)
    assert {"method", "optimizer", "lr_scheduler", "trainer", "rng"} <= ckpt.keys()
    assert torch.equal(ckpt["method"]["keep_rates"], rates)
    assert "network.skc.blocks.global_block.map_in.0.weight" in ckpt["method"]  # the unused reference convs are kept (Q10)

    evaluate = run_workflow(bundle_workflow(config_files("evaluate", "skcdf"), dataset, tmp_path, dataset_dir=str(dataset), **TINY))
    assert 0.0 <= evaluate.parser.get_parsed_content("validate#evaluator").state.metrics["val_mean_dice"] <= 1.0

    image = json.loads((dataset / "datalist.json").read_text())["validation"][0]["image"]
    infer = bundle_workflow(config_files("inference", "skcdf"), dataset, tmp_path, workflow_type="infer", input_files=[image],
                            output_dir=str(tmp_path / "pred"), **tiny("skcdf", kind="inference"))  # fmt: skip
    network = infer.parser.get_parsed_content("network")
    assert isinstance(network, SKCDFNetwork) and network.inference_decoder == "u"
    run_workflow(infer)
    (pred_file,) = list((tmp_path / "pred").glob("*.nii.gz"))
    pred = np.asarray(nib.load(str(pred_file)).dataobj)
    assert pred.shape == SHAPE and pred.min() >= 0 and pred.max() < C


@pytest.mark.parametrize(
    "overrides,check",
    [
        ({}, lambda n: list(n.skc.block_names) == ["local", "global"] and n.skc.fusion == "sequential"),
        ({"skc#blocks": ["global", "local"]}, lambda n: list(n.skc.block_names) == ["global", "local"]),  # (d)
        ({"skc#fusion": "parallel_sum"}, lambda n: n.skc.fusion == "parallel_sum"),  # (e)
        ({"skc#blocks": ["local"]}, lambda n: list(n.skc.block_names) == ["local"]),  # (b)/(c)
        ({"skc#enabled": False}, lambda n: n.skc is None),  # T6 baseline
        ({"skc#attention": "self"}, lambda n: n.attention == "self"),  # T6 SA
        ({"decoupled": False}, lambda n: n.decoder_u is None),
        ({"skc#global_self_head_layout": "consistent"}, lambda n: n.skc.block("global").attn.self_head_merge == "contiguous"),
    ],
)
def test_ablation_switches_are_config_keys(tmp_path, dataset, overrides, check):
    wf = bundle_workflow(config_files("train", "skcdf"), dataset, tmp_path, dataset_dir=str(dataset), resume_from="", **TINY, **overrides)
    assert check(wf.parser.get_parsed_content("network"))
