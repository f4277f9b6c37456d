"""scdl_monai.engines.preflight: the single checks (the entry points are tested in tests/reliability/)."""

import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet, UNet

from scdl_monai.methods.cps import CPS
from scdl_monai.methods.supervised import Supervised
from scdl_monai.networks.diffvnet import DiffVNet
from scdl_monai.networks.magicnet import MagicNetwork
from scdl_monai.networks.vnet import VNet
from scdl_monai.engines.preflight import (
    PreflightError,
    _resampled_ras_shape,
    check_checkpoint,
    check_divisible,
    check_num_classes,
    check_protocol,
    check_splits,
    check_training,
    check_writable,
    shape_factor,
    shape_hyperparameters,
)


def test_shape_factor_of_every_backbone_and_wrapper():
    vnet = VNet(3, 1, 3, n_filters=4)
    assert shape_factor(vnet) == (16, 16, 16)
    assert shape_factor(DiffVNet(3, 1, 3, n_filters=4)) == (16, 16, 16)
    assert shape_factor(UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, (2, 2, 1)))) == (4, 4, 2)
    assert shape_factor(SegResNet(blocks_down=(1, 2, 2))) == (4, 4, 4)
    assert shape_factor(MagicNetwork(vnet, cube_size=16, patch_size=32, hidden_features=8)) == (16, 16, 16)
    assert shape_factor(torch.nn.Linear(2, 2)) is None
    assert check_divisible([32, 32, 48], {"n": vnet}) == []
    assert check_divisible([32, 32, 40], {"n": vnet}) == [
        "patch_size=[32, 32, 40] must be divisible by [16, 16, 16] for network 'n' (VNet); e.g. [32, 32, 32]"
    ]


def test_num_classes_against_dataset_names_and_networks():
    nets = {"a": VNet(3, 1, 14, n_filters=4), "b": VNet(3, 1, 3, n_filters=4), "s": SegResNet(out_channels=5)}
    assert check_num_classes(14, "synapse", ["x"] * 14, {"a": nets["a"]}) == []
    assert check_num_classes(14, "amos") == ["num_classes=14 but dataset_name='amos' has 16 classes (background included)"]
    assert check_num_classes(14, None, None, nets) == [  # SegResNet keeps no out_channels: not checked
        "network 'b' (VNet) has 3 output channels but num_classes=14 (network_def#out_channels)"
    ]
    assert "did you mean 'synapse'" in check_num_classes(14, "synaps")[0]
    assert check_num_classes(1) == ["num_classes must be an integer >= 2 (background included), got 1"]


def test_writable_creates_nothing(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper", "ckpt_dir") == []
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("")
    assert check_writable(tmp_path / "file" / "x", "output_dir") == [
        f"output_dir='{tmp_path / 'file' / 'x'}' cannot be created: {tmp_path / 'file'} is not a folder"
    ]


def test_checkpoint_fit(tmp_path):
    method = CPS(VNet(3, 1, 3, n_filters=4), VNet(3, 1, 3, n_filters=4))
    torch.save({"method": method.state_dict(), "trainer": {"iteration": 1}}, tmp_path / "ok.pt")
    assert check_checkpoint(tmp_path / "ok.pt", {"method": method}) == []
    torch.save(method.network_a.state_dict(), tmp_path / "model.pt")  # a single state dict (models/model.pt)
    assert check_checkpoint(tmp_path / "model.pt", {"model": VNet(3, 1, 3, n_filters=4)}) == []
    other = Supervised(VNet(3, 1, 3, n_filters=4), torch.nn.CrossEntropyLoss())
    (problem,) = check_checkpoint(tmp_path / "ok.pt", {"method": other})
    assert "does not fit 'method' (Supervised): tensors" in problem and "missing (e.g. network." in problem
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert check_checkpoint(tmp_path / "junk.pt", {"m": other}) == [
        f"checkpoint='{tmp_path / 'junk.pt'}' cannot be read as a PyTorch checkpoint (UnpicklingError: not a complete torch.save file)"
    ]


def _shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.parametrize(
    "trained,config",
    [
        (VNet(3, 2, 3, n_filters=4), {"n_filters": 8, "num_classes": 14, "network_def#in_channels": 1}),
        # MONAI UNet: the last layer of a 2-level UNet without residual units is a transposed convolution
        (UNet(3, 2, 3, channels=(4, 8), strides=(2,)), {"n_filters": 8, "num_classes": 14, "network_def#in_channels": 1}),
    ],
)
def test_shape_hyperparameters_reads_width_classes_and_input_channels(trained, config):
    n, c, i = config["n_filters"], config["num_classes"], config["network_def#in_channels"]
    model = VNet(3, i, c, n_filters=n) if isinstance(trained, VNet) else UNet(3, i, c, channels=(n, 2 * n), strides=(2,))
    assert shape_hyperparameters(_shapes(trained), _shapes(model), config) == {"n_filters": 4, "num_classes": 3, "network_def#in_channels": 2}
    assert shape_hyperparameters(_shapes(trained), _shapes(model), {"num_classes": c}) == {"num_classes": 3}  # only what is asked
    assert shape_hyperparameters({"other.weight": (4, 1, 3, 3, 3)}, _shapes(model), config) == {}  # no tensor in common


def test_protocol_must_be_known():
    assert check_protocol(None) == [] and check_protocol("DHC") == []
    assert check_protocol("dhcc") == ["protocol='dhcc' is not valid: did you mean 'dhc'? available: dhc, ga, native"]


def test_splits_and_orientation_aware_resampled_shape(tmp_path):
    (tmp_path / "d.json").write_text('{"training": [], "validation": [{"image": "x"}]}')
    assert check_splits(tmp_path / "d.json", {"training": "labeled", "unlabeled": "u", "validation": "v"}) == [
        f"datalist='{tmp_path / 'd.json'}': 'training' is empty (labeled)",
        f"datalist='{tmp_path / 'd.json'}' has no 'unlabeled' list (u); it has ['training', 'validation']",
    ]
    # array axes (z, y, x) stored LPS-like: the shape is reported along R, A, S after resampling
    affine = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    assert _resampled_ras_shape((40, 100, 120), affine, (1.5, 1.5, 2.0)) == (64, 53, 50)


def test_training_check_raises_or_exits_with_every_problem(tmp_path):
    (tmp_path / "d.json").write_text('{"training": [], "validation": []}')
    method = Supervised(VNet(3, 1, 3, n_filters=4), torch.nn.CrossEntropyLoss())
    with pytest.raises(PreflightError) as err:
        check_training(tmp_path / "d.json", 3, method=method, patch_size=[30, 32, 32])
    assert len(err.value.problems) == 3  # two empty lists and the patch; no 'unlabeled' for Supervised
    with pytest.raises(SystemExit, match=r"^error: cannot start the training: 3 problem\(s\)"):
        check_training(tmp_path / "d.json", 3, method=method, patch_size=[30, 32, 32], on_error="exit")
