"""Training-side fidelity of the shipped bundles to their reference code.

* every network of the DHC, CPS, SimiS, CLD and supervised bundles (and their SCDL variants) is
  built with the reference ``Dropout3d(0.5)`` (``xmed-lab/DHC:code/train_dhc.py`` ``make_model_all``,
  ``train_cps.py``, ``train_simis.py``, ``train_cld.py``, ``train_fully.py``): active in train mode, off in eval mode; GA-CPS and the
  MagicNet family are built without dropout, as their references;
* model selection: early stopping stops a run whose validation score does not improve (patience
  given in epochs, as the reference, and converted to validation rounds); a run shorter than
  ``val_interval`` still leaves ``models/model.pt`` (its final weights);
* the CPS bundle is the DHC paper's CPS (DHC protocol, reference random crops, validation on a
  centre crop), and its native, class-balanced variant ships as the ``cps_native`` overlay.
"""

import json

import pytest
import torch
from monai.bundle import ConfigParser

from scdl_monai.bundles import VARIANTS, bundle_name, compose_config

from ..conftest import REPO_ROOT
from .conftest import config_files, run_train, tiny, write_fake_synapse

DROPOUT_METHODS = ("dhc", "cps", "supervised", "simis", "cld")
NO_DROPOUT_METHODS = ("ga_cps", "magicnet", "ga_magicnet")


def _networks(parser):
    names = ["network_def"] + (["network_b_def"] if "network_b_def" in parser.config else [])
    return [parser.get_parsed_content(n, instantiate=True) for n in names]


def _shipped(method, dataset, scdl, kind="train"):
    configs = REPO_ROOT / "bundles" / bundle_name(method, dataset) / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / f"{kind}.json")] + ([str(configs / "scdl.json")] if scdl else []))
    parser["n_filters"] = 4  # the layout, not the width, is under test
    return parser


@pytest.mark.parametrize("case", [c for c in VARIANTS if c[0] in DROPOUT_METHODS], ids=lambda c: bundle_name(*c[:2]) + ("+scdl" if c[2] else ""))
def test_shipped_dropout_networks_train_with_reference_dropout(case):
    method, dataset, scdl = case
    parser = _shipped(method, dataset, scdl)
    assert parser["dropout"] == 0.5
    nets = _networks(parser)
    assert len(nets) == (1 if method == "supervised" else 2)
    x = torch.rand(2, 1, 16, 16, 16)
    for net in nets:
        drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout3d)]
        backbone = getattr(net, "backbone", net)  # SCDL bundles wrap the backbone (SCDLNetwork)
        assert backbone.has_dropout and drops and all(m.p == 0.5 for m in drops)
        torch.manual_seed(0)
        net.train()
        with torch.no_grad():
            assert not torch.allclose(net(x), net(x))  # a new channel mask per call
        net.eval()
        with torch.no_grad():
            assert torch.equal(net(x), net(x))  # inference: no dropout
    # the inference config builds the same networks (dropout is parameter-free, off in eval)
    infer = _shipped(method, dataset, scdl, kind="inference")
    assert infer["dropout"] == 0.5


@pytest.mark.parametrize("method", NO_DROPOUT_METHODS)
def test_ga_and_magicnet_networks_have_no_dropout(method):
    parser = _shipped(method, "synapse", False)
    assert parser["dropout"] == 0.0 and parser["amp"] is False  # fp32 reference runs
    for net in _networks(parser):
        assert not getattr(net, "backbone", net).has_dropout


def test_dhc_family_defaults_follow_the_reference_scripts():
    for method in ("dhc", "cps"):
        syn = ConfigParser(compose_config("train", method, "synapse"))
        amos = ConfigParser(compose_config("train", method, "amos"))
        # train3times_seeds_20p.sh / _5p.sh: 300 / 200 epochs; utils/config.py patience 100 / 50
        assert syn.get_parsed_content("max_epochs") == 300 and amos.get_parsed_content("max_epochs") == 200
        assert syn.get_parsed_content("early_stop_patience") == 100
        assert amos.get_parsed_content("early_stop_patience") == 50
        assert syn.get_parsed_content("val_crop") == "center" and syn["val_interval"] == 10
        # patience in epochs -> validation rounds of the evaluator
        assert syn.get_parsed_content("early_stopping#patience") == 10
        assert amos.get_parsed_content("early_stopping#patience") == 5
    ga = ConfigParser(compose_config("train", "ga_cps", "amos"))
    assert ga.get_parsed_content("val_interval") == 1000 and ga.get_parsed_content("early_stop_patience") is None
    sup = ConfigParser(compose_config("train", "supervised", "synapse"))
    assert sup["network_def"]["init"] is None and sup["batch_size"] == 4  # train_fully.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_fake_synapse(tmp_path_factory.mktemp("fidelity"), metadata_method="cps")


def test_early_stopping_stops_a_run_whose_score_does_not_improve(dataset, tmp_path):
    # patience 4 epochs at val_interval 2 = 2 validation rounds: validations at epochs 2 (best), 4, 6 -> stop
    wf = run_train(config_files("train", "cps"), dataset, tmp_path, **{**tiny("cps"),
        "train#trainer#max_epochs": 20, "val_interval": 2, "early_stop_patience": 4,
        "early_stopping#score_function": "$lambda engine: 0.5"})  # fmt: skip
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 6 and trainer.state.max_epochs == 20
    assert (tmp_path / "models" / "model.pt").is_file()


def test_early_stopping_follows_the_validation_dice(dataset, tmp_path):
    # a learning rate of 0 keeps the weights; without early stopping the run goes on
    common = {**tiny("cps"), "learning_rate": 0.0, "train#trainer#max_epochs": 6, "val_interval": 1}
    wf = run_train(config_files("train", "cps"), dataset, tmp_path / "off", **common, early_stop_patience=None)
    assert wf.parser.get_parsed_content("train#trainer").state.epoch == 6
    wf = run_train(config_files("train", "cps"), dataset, tmp_path / "on", **common, early_stop_patience=1)
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    assert wf.parser.get_parsed_content("train#trainer").state.epoch < 6
    assert "val_mean_dice" in evaluator.state.metrics


def test_a_run_shorter_than_val_interval_leaves_model_pt(dataset, tmp_path):
    wf = run_train(config_files("train", "cps"), dataset, tmp_path, **{**tiny("cps"), "val_interval": 5})
    assert wf.parser.get_parsed_content("validate#evaluator").state.iteration == 0  # no validation ran
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    net = wf.parser.get_parsed_content("inference_network")
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_cps_bundle_is_the_dhc_papers_cps():
    parser = ConfigParser(compose_config("train", "cps", "synapse"))
    assert parser["protocol"] == "dhc"
    crops = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert "ReferenceRandomCropd" in crops and "RandCropByLabelClassesd" not in crops
    val = [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert val[-1] == "CenterSpatialCropd"  # the reference validates on one centre crop per case
    evaluate = ConfigParser(compose_config("train", "cps", "synapse"))
    evaluate.update(compose_config("evaluate", "cps", "synapse"))
    names = [type(t).__name__ for t in evaluate.get_parsed_content("validate#preprocessing").transforms]
    assert "CenterSpatialCropd" not in names  # evaluation scores whole volumes


def test_cps_native_overlay_equals_the_native_protocol_composition():
    shipped = REPO_ROOT / "bundles" / "cps_synapse" / "configs"
    overlay = json.loads((shipped / "cps_native.json").read_text())
    dhc = ConfigParser(compose_config("train", "cps", "synapse"))
    dhc.update({k: v for k, v in overlay.items()})
    native = ConfigParser(compose_config("train", "cps", "synapse", protocol="native"))
    for key in ("protocol", "a_min", "a_max", "pixdim", "patch_size", "train#deterministic_transforms",
                "train#random_transforms", "train#unlabeled_transforms", "validate#transforms"):  # fmt: skip
        assert dhc[key] == native[key], key
    assert dhc.get_parsed_content("val_crop") is None
    infer_overlay = json.loads((shipped / "cps_native_inference.json").read_text())
    dhc_inf = ConfigParser(compose_config("inference", "cps", "synapse"))
    dhc_inf.update(infer_overlay)
    native_inf = ConfigParser(compose_config("inference", "cps", "synapse", protocol="native"))
    for key in ("protocol", "a_min", "a_max", "pixdim", "patch_size", "preprocessing"):
        assert dhc_inf[key] == native_inf[key], key
    assert (shipped / "cps_native.json").is_file() and (shipped / "cps_native_inference.json").is_file()


def test_cps_native_overlay_trains_at_smoke_size(dataset, tmp_path):
    wf = run_train(config_files("train", "cps", "cps_native.json"), dataset, tmp_path, **tiny("cps"))
    names = [type(t).__name__ for t in wf.parser.get_parsed_content("train#preprocessing").transforms]
    assert "RandCropByLabelClassesd" in names
    assert (tmp_path / "models_cps_native" / "model.pt").is_file()
    output = wf.parser.get_parsed_content("train#trainer").state.output[0]
    assert torch.isfinite(torch.as_tensor(float(output["loss"])))
