"""TrainedConfigWriter: the values a training run used go into the configs that load its model.pt."""

import json
import logging
import os

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from scdl_monai.handlers.trained_config import TrainedConfigWriter

from ..conftest import REPO_ROOT

#: Top-level keys shared by train.json and inference.json that are not hyper-parameters of the
#: trained model: paths, devices, workers, speed knobs, labels, and dropout (off at inference).
NOT_RECORDED = {
    "bundle_root", "dataset_dir", "num_workers", "sw_batch_size", "channels_last", "amp", "precision",
    "protocol", "protocol_note", "method_name", "dataset_name", "dropout", "finalize", "seed",
}  # fmt: skip


def _configs(folder):
    """A standalone inference.json and a train.json + evaluate.json pair, as a bundle ships them."""
    configs = folder / "configs"
    configs.mkdir(parents=True)
    inference = {
        "n_filters": 32,
        "patch_size": [96, 96, 64],
        "sw_overlap": "$[0.5] * 3",
        "network_def": {"_target_": "scdl_monai.networks.backbones.build_backbone", "name": "vnet", "norm": "batch"},
        "scdl_block": {"z_dim": 256, "num_proxy_samples": 50},
    }
    (configs / "inference.json").write_text(json.dumps(inference, indent=4))
    (configs / "train.json").write_text(json.dumps({"n_filters": 32, "patch_size": [96, 96, 64], "seed": 0}))
    (configs / "evaluate.json").write_text(json.dumps({"evaluate_split": "test"}))
    os.chmod(configs / "inference.json", 0o640)
    return [[configs / "inference.json"], [configs / "train.json", configs / "evaluate.json"]]


def test_writes_the_differing_values_into_the_last_file_of_each_target(tmp_path):
    targets = _configs(tmp_path)
    values = {
        "n_filters": 4,                     # differs everywhere
        "patch_size": (96, 96, 64),         # the same (a tuple is the JSON list)
        "sw_overlap": [0.25, 0.25, 0.25],   # an expression on disk: compared by its value
        "network_def#norm": "instance",     # nested: set inside the file's dict
        "network_def": "@ignored",          # a component on disk: never replaced
        "scdl_block": {"z_dim": 8, "num_proxy_samples": 50},
        "seed": 3,                          # not in inference.json: not added there
    }  # fmt: skip
    written = TrainedConfigWriter(values, targets).write()
    inference = json.loads(targets[0][0].read_text())
    assert inference["n_filters"] == 4 and inference["patch_size"] == [96, 96, 64]
    assert inference["sw_overlap"] == [0.25, 0.25, 0.25] and inference["scdl_block"]["z_dim"] == 8
    assert inference["network_def"] == {"_target_": "scdl_monai.networks.backbones.build_backbone", "name": "vnet", "norm": "instance"}
    assert "seed" not in inference and "network_def#norm" not in inference
    assert targets[0][0].stat().st_mode & 0o777 == 0o640
    assert '    "patch_size": [96, 96, 64],\n' in targets[0][0].read_text()  # lists of numbers stay on one line
    # the overlay gets what train.json + evaluate.json would otherwise read wrongly, nothing else
    assert json.loads(targets[1][1].read_text()) == {"evaluate_split": "test", "n_filters": 4, "seed": 3}
    assert json.loads(targets[1][0].read_text())["n_filters"] == 32  # train.json itself is never written
    assert written[targets[1][1]] == {"n_filters": 4, "seed": 3}
    evaluate = ConfigParser()
    evaluate.read_config([str(f) for f in targets[1]])
    assert evaluate.get_parsed_content("n_filters") == 4


def test_writes_once_when_the_model_is_first_saved_and_skips_what_it_cannot_write(tmp_path, caplog):
    targets = _configs(tmp_path) + [[tmp_path / "no_bundle" / "inference.json"]]
    trainer, validator = Engine(lambda e, b: None), Engine(lambda e, b: None)
    writer = TrainedConfigWriter({"n_filters": 4, "patch_size": torch.tensor([1])}, targets, validator=validator)
    writer.attach(trainer)
    with caplog.at_level(logging.INFO):
        validator.run([0])  # the first validation writes model.pt, then the configs
    assert json.loads(targets[0][0].read_text())["n_filters"] == 4
    assert "patch_size=tensor([1]) is not a JSON value" in caplog.text
    assert "no_bundle/inference.json not found" in caplog.text
    targets[0][0].write_text(json.dumps({"n_filters": 16}))
    trainer.run([0])
    validator.run([0])
    assert json.loads(targets[0][0].read_text()) == {"n_filters": 16}  # written once per run
    with pytest.raises(TypeError, match="targets"):
        TrainedConfigWriter({"n_filters": 4}, "configs/inference.json")


def _value(value) -> bool:
    """Plain JSON data: no expression, reference, macro or component."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return all(_value(v) for v in value)
    if isinstance(value, dict):
        return "_target_" not in value and all(_value(v) for v in value.values())
    return True


@pytest.mark.parametrize("bundle", sorted(p.name for p in (REPO_ROOT / "bundles").iterdir() if (p / "configs").is_dir()))
def test_every_shipped_bundle_records_the_hyperparameters_its_inference_config_shares(bundle):
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    train, inference = (json.loads((configs / f"{k}.json").read_text()) for k in ("train", "inference"))
    recorded = train["trained_config_writer"]["values"]
    shared = {k for k, v in inference.items() if k in train and _value(v) and _value(train[k])}
    assert sorted(shared - NOT_RECORDED - set(recorded)) == [], f"{bundle}: add these to trained_config_writer#values"
    assert all(v == f"@{k}" for k, v in recorded.items()) and set(recorded) <= set(inference)
