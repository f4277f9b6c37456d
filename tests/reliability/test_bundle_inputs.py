"""Bad configuration and data through ``python -m monai.bundle run`` on a training bundle.

The bundle's first ``run`` step is :func:`scdl_monai.engines.preflight.check_training`: every mistake
below ends the run before any dataset is cached or file written, with one message naming the
config key or file and exit status 1. The rows call ``monai.bundle.scripts.run`` in-process (the
function ``python -m monai.bundle run`` calls); one row and the NaN-loss fault run as real
subprocesses to show the exit status and the output a user sees.
"""

import json

import pytest
import torch

from scdl_monai.bundles import component_files, components_dir
from scdl_monai.cli.bundle_tool import main as bundles_main
from scdl_monai.data.utils import UnknownNameError, user_error_message
from scdl_monai.methods.cps import CPS
from scdl_monai.networks.vnet import VNet

from .conftest import REPO_ROOT, run_cli, write_json

TINY = {"num_workers": 0, "cache_rate": 0.0, "n_filters": 4, "patch_size": [32, 32, 32], "batch_size": 1,
        "unlabeled_batch_size": 1, "val_interval": 100, "amp": False, "train#trainer#max_epochs": 1}  # fmt: skip
META = REPO_ROOT / "bundles" / "cps_synapse" / "configs" / "metadata.json"
LOGGING_CONF = components_dir() / "logging.conf"


def config_files(method="cps"):
    """The method's train config from the bundle components, native protocol."""
    return [str(f) for f in component_files("train", method, "synapse", protocol="native")]


def refused(bundle_root, datalist, method="cps", **overrides) -> str:
    """Run the training bundle; it must stop before training with SystemExit; returns the message."""
    from monai.bundle.scripts import run

    with pytest.raises(SystemExit) as stop:
        run(config_file=config_files(method), meta_file=str(META), logging_file=str(LOGGING_CONF),
            bundle_root=str(bundle_root), datalist=str(datalist), **{**TINY, **overrides})  # fmt: skip
    message = str(stop.value.code)
    print(message)  # copied into docs/reliability.md
    assert message.startswith("error: cannot start the training:")
    assert not (bundle_root / "models").exists() and not (bundle_root / "eval").exists()  # nothing written
    return message


def edited(phantom, tmp_path, name, **changes):
    """A copy of the phantom datalist with some keys replaced."""
    content = json.loads(phantom.read_text())
    base = phantom.parent
    for section in ("training", "unlabeled", "validation", "test"):  # make paths absolute for the copy
        for entry in content.get(section, []):
            for key in ("image", "label"):
                if key in entry:
                    entry[key] = str(base / entry[key]) if not entry[key].startswith("/") else entry[key]
    content.update(changes)
    return write_json(tmp_path / name, content)


def test_empty_labeled_split_in_a_real_process(phantom, tmp_path):
    datalist = edited(phantom, tmp_path, "no_training.json", training=[])
    args = ["-m", "monai.bundle", "run", "--config_file", json.dumps(config_files()), "--meta_file", META,
            "--bundle_root", tmp_path / "b", "--datalist", datalist, "--num_workers", "0"]  # fmt: skip
    out = run_cli(*args)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"datalist='{datalist}': 'training' is empty (labeled training cases)" in out.stderr
    assert not (tmp_path / "b").exists()


def test_empty_unlabeled_split_missing_datalist_and_bad_case(phantom, bad_files, tmp_path):
    datalist = edited(phantom, tmp_path, "no_unlabeled.json", unlabeled=[])
    assert f"datalist='{datalist}': 'unlabeled' is empty (unlabeled cases, needed by CPS)" in refused(tmp_path / "b", datalist)
    missing = tmp_path / "nope.json"
    assert f"datalist='{missing}': file not found" in refused(tmp_path / "b", missing)
    content = json.loads(edited(phantom, tmp_path, "tmp.json") and (tmp_path / "tmp.json").read_text())
    content["training"][0]["image"] = bad_files["nan"]
    content["unlabeled"][0]["image"] = bad_files["mr"]
    datalist = write_json(tmp_path / "bad_case.json", content)
    message = refused(tmp_path / "b", datalist)
    assert f"training[0].image: {bad_files['nan']}: image has 1 NaN and 1 Inf voxel(s)" in message
    assert f"unlabeled[0].image: {bad_files['mr']}: intensities [0, 300] have no negative value" in message


def test_inconsistent_classes_shapes_and_outputs(phantom, tmp_path):
    message = refused(tmp_path / "b", phantom, num_classes=5)
    assert "num_classes=5 but dataset_name='synapse' has 14 classes (background included)" in message
    assert "class_names has 14 names but num_classes=5" in message
    message = refused(tmp_path / "b", phantom, **{"network_def#out_channels": 3})
    assert "networks 'network_a', 'network_b' (VNet) have 3 output channels but num_classes=14 (network_def#out_channels)" in message
    message = refused(tmp_path / "b", phantom, patch_size=[40, 40, 40])
    assert "patch_size=[40, 40, 40] must be divisible by [16, 16, 16] for networks 'network_a', 'network_b' (VNet)" in message
    message = refused(tmp_path / "b", phantom, patch_size=[128, 128, 128])
    assert "patch_size=[128, 128, 128] is larger than training[0]" in message and "by 4.0x, more than max_pad_ratio=3" in message
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    message = refused(blocker / "bundle", phantom)
    assert f"ckpt_dir='{blocker}/bundle/models' cannot be created: {blocker} is not a folder" in message
    assert f"output_dir='{blocker}/bundle/eval' cannot be created" in message


def test_resume_from_a_checkpoint_of_another_architecture(phantom, tmp_path):
    other = CPS(VNet(3, 1, 14, n_filters=8), VNet(3, 1, 14, n_filters=8))
    torch.save({"method": other.state_dict()}, tmp_path / "wide.pt")
    message = refused(tmp_path / "b", phantom, resume_from=str(tmp_path / "wide.pt"))
    assert f"resume_from='{tmp_path / 'wide.pt'}' does not fit 'method' (CPS): tensors" in message
    assert "of another shape (e.g. network_a.encoder_stages.0.0.0.weight: checkpoint (8, 1, 3, 3, 3) vs model (4, 1, 3, 3, 3))" in message
    torch.save({"network": VNet(3, 1, 14, n_filters=4).state_dict()}, tmp_path / "supervised.pt")
    message = refused(tmp_path / "b", phantom, resume_from=str(tmp_path / "supervised.pt"))
    assert "has no 'method' entry (it holds ['network']): written by another method?" in message


def test_resume_true_without_any_checkpoint(phantom, tmp_path):
    message = refused(tmp_path / "b", phantom, resume=True)
    assert f"resume_from='{(tmp_path / 'b' / 'models').resolve()}/checkpoint*.pt': file not found" in message


def test_unknown_names_with_did_you_mean(phantom, tmp_path, capsys):
    assert bundles_main(["write", "--method", "cpss", "--dataset", "synapse", "--out", str(tmp_path / "w")]) == 1
    assert "got 'cpss'. did you mean 'cps'?" in capsys.readouterr().err
    assert bundles_main(["write", "--method", "cps", "--dataset", "synapse", "--backbone", "unett", "--out", str(tmp_path / "w")]) == 1
    assert "got 'unett'. did you mean 'unet'?" in capsys.readouterr().err
    assert bundles_main(["write", "--method", "cps", "--dataset", "synaps", "--out", str(tmp_path / "w")]) == 1
    assert "got 'synaps'. did you mean 'synapse'?" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    # an override of the backbone name in a bundle run fails while building the network: in Python,
    # inside MONAI's "Failed to instantiate" error; the command lines print one line naming the key
    from monai.bundle.scripts import run

    with pytest.raises(RuntimeError) as err:
        run(config_file=config_files(), meta_file=str(META), logging_file=False, bundle_root=str(tmp_path / "b"),
            datalist=str(phantom), **{**TINY, "network_def#name": "unett"})  # fmt: skip
    assert isinstance(err.value.__cause__, UnknownNameError)
    message = "network_def#name='unett' is not valid: did you mean 'unet'? available: vnet, unet, segresnet"
    assert user_error_message(err.value) == message
    assert not (tmp_path / "b" / "models").exists()


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(phantom, tmp_path):
    bundle = tmp_path / "b"
    args = ["-m", "monai.bundle", "run", "--config_file", json.dumps(config_files()), "--meta_file", META,
            "--logging_file", LOGGING_CONF, "--bundle_root", bundle, "--datalist", phantom,
            "--learning_rate", "1e20"]  # fmt: skip
    for key, value in {**TINY, "train#trainer#max_epochs": 4, "train#trainer#epoch_length": 1}.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, bool) else str(value)]
    out = run_cli(*args)
    models = bundle / "models"
    expected = "training stopped: non-finite loss at epoch 2, iteration 2 (loss = nan"
    print([line for line in out.stderr.splitlines() if "training stopped" in line][-1])
    assert out.returncode != 0 and expected in out.stderr
    assert f"Last good checkpoint: {models / 'checkpoint_epoch=1.pt'}" in out.stderr
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint_epoch=1.pt"]  # no final checkpoint of NaN weights
    state = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())
