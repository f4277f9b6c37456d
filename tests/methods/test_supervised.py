"""Tests for scdl_monai.methods.supervised and the SemiSupervisedMethod base behaviour."""

import pytest
import torch
from monai.losses import DiceCELoss as MonaiDiceCELoss
from torch import nn

from scdl_monai.losses.segmentation import DiceCELoss
from scdl_monai.methods.base import SemiSupervisedMethod
from scdl_monai.methods.supervised import Supervised
from scdl_monai.networks.vnet import VNet

C = 3


def setup(seed=0, n=2):
    torch.manual_seed(seed)
    net = VNet(out_channels=C, n_filters=4)
    image = torch.randn(n, 1, 16, 16, 16)
    label = torch.randint(0, C, (n, 1, 16, 16, 16))
    return net, image, label


def test_loss_and_pred_match_network_and_reference_loss():
    net, image, label = setup()
    method = Supervised(net)
    out = method(image, label)
    logits = net(image)
    assert torch.allclose(out.pred, logits, atol=1e-6) and not out.pred.requires_grad
    assert torch.allclose(out.loss, DiceCELoss(mode="reference")(logits, label), rtol=1e-5)
    assert set(out.terms) == {"loss_sup"} and torch.equal(out.terms["loss_sup"], out.loss.detach())


def test_unlabeled_images_are_ignored():
    net, image, label = setup()
    method = Supervised(net)
    with_u = method(image, label, torch.randn(3, 1, 16, 16, 16))
    without_u = method(image, label)
    assert torch.allclose(with_u.loss, without_u.loss)


def test_accepts_a_monai_loss_without_weight_argument():
    net, image, label = setup()
    loss = MonaiDiceCELoss(to_onehot_y=True, softmax=True)
    out = Supervised(net, loss=loss)(image, label)
    assert torch.allclose(out.loss, loss(net(image), label), rtol=1e-5)


def test_train_step_defaults_to_forward_and_gradients_flow():
    net, image, label = setup()
    method = Supervised(net)
    out = method.train_step(None, image, label, None)
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_networks_inference_network_and_unsup_weight():
    net, _, _ = setup()
    method = Supervised(net)
    assert method.networks() == {"network": net}
    assert method.inference_network() is net
    method.set_unsup_weight(0.5)
    assert method.state_dict()["unsup_weight"].item() == 0.5
    with pytest.raises(KeyError, match="unknown network 'network_a'"):
        method.net("network_a")


def test_errors():
    with pytest.raises(TypeError, match="network must be an nn.Module"):
        Supervised("vnet")
    net, image, label = setup()
    with pytest.raises(ValueError, match="label_l must have shape"):
        Supervised(net)(image, label[:1])


def test_base_class_requires_forward_and_inference_network():
    method = SemiSupervisedMethod()
    with pytest.raises(NotImplementedError, match="must implement forward"):
        method(torch.zeros(1), torch.zeros(1))
    with pytest.raises(NotImplementedError, match="must implement inference_network"):
        method.inference_network()
    assert isinstance(method, nn.Module) and method.networks() == {}
