"""Tests for scdl_monai.networks.weight_ema: parameter EMA (mean teacher) and A&D's decoder averaging."""

import pytest
import torch
from torch import nn

from scdl_monai.networks.weight_ema import ema_average_into, ema_update


class Tiny(nn.Module):
    def __init__(self, out=3, temb=True):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 1)
        self.norm = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, out)
        if temb:
            self.temb_proj = nn.Linear(4, 3)


def _fill(module, value):
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)
        for name, b in module.named_buffers():
            if b.dtype.is_floating_point:
                b.fill_(value + 100)
    return module


def test_ema_average_into_hand_arithmetic_buffers_and_unmatched():
    theta = _fill(Tiny(temb=False), 1.0)
    xi = _fill(Tiny(out=3, temb=True), 3.0)
    psi = _fill(Tiny(out=3, temb=False), 5.0)
    mean_before = theta.norm.running_mean.clone()
    tracked_before = theta.norm.num_batches_tracked.clone()
    updated = ema_average_into(theta, [xi, psi], momentum=0.99)
    # 0.99 * 1 + 0.01 * (3 + 5) / 2 = 1.03 for every matched parameter
    for name, p in theta.named_parameters():
        assert torch.allclose(p, torch.full_like(p, 1.03)), name
    assert updated == [n for n, _ in theta.named_parameters()]
    # buffers (BN running stats) are not averaged; sources are not modified
    assert torch.equal(theta.norm.running_mean, mean_before)
    assert torch.equal(theta.norm.num_batches_tracked, tracked_before)
    assert all(torch.all(p == 3.0) for p in xi.parameters())
    assert all(torch.all(p == 5.0) for p in psi.parameters())


def test_ema_average_into_skips_time_layers_and_shape_mismatch():
    theta = _fill(Tiny(out=3, temb=True), 1.0)
    xi = _fill(Tiny(out=4, temb=True), 3.0)  # head has a different shape
    psi = _fill(Tiny(out=3, temb=True), 5.0)
    updated = ema_average_into(theta, [xi, psi], momentum=0.5, skip="temb")
    assert updated == ["conv.weight", "conv.bias", "norm.weight", "norm.bias"]
    assert torch.all(theta.conv.weight == 0.5 * 1 + 0.5 * 4)
    assert torch.all(theta.head.weight == 1.0) and torch.all(theta.temb_proj.weight == 1.0)
    # a predicate works the same way
    theta2 = _fill(Tiny(out=3, temb=True), 1.0)
    assert "conv.weight" not in ema_average_into(theta2, psi, 0.5, skip=lambda n: n.startswith("conv"))
    assert torch.all(theta2.conv.weight == 1.0) and torch.all(theta2.temb_proj.weight == 3.0)


def test_ema_keeps_parameter_identity_and_optimizer_state():
    theta, src = Tiny(), Tiny()
    opt = torch.optim.SGD(theta.parameters(), lr=0.1, momentum=0.9)
    theta.head(torch.ones(1, 3)).sum().backward()
    opt.step()
    ids = [id(p) for p in theta.parameters()]
    momentum = opt.state[theta.head.weight]["momentum_buffer"].clone()
    ema_average_into(theta, [src], momentum=0.9)
    ema_update(theta, src, momentum=0.9)
    assert ids == [id(p) for p in theta.parameters()]  # in place: the optimizer still owns them
    assert torch.equal(opt.state[theta.head.weight]["momentum_buffer"], momentum)
    assert all(p.grad_fn is None for p in theta.parameters())


def test_ema_update_hand_arithmetic_and_extremes():
    teacher, student = _fill(Tiny(), 1.0), _fill(Tiny(), 3.0)
    buf = teacher.norm.running_var.clone()
    ema_update(teacher, student, momentum=0.9)
    assert all(torch.allclose(p, torch.full_like(p, 1.2)) for p in teacher.parameters())
    assert torch.equal(teacher.norm.running_var, buf)
    ema_update(teacher, student, momentum=0.0)
    assert all(torch.all(p == 3.0) for p in teacher.parameters())
    ema_update(teacher, _fill(Tiny(), 9.0), momentum=1.0)
    assert all(torch.all(p == 3.0) for p in teacher.parameters())


def test_ema_errors():
    with pytest.raises(ValueError, match="momentum"):
        ema_update(Tiny(), Tiny(), momentum=1.5)
    with pytest.raises(ValueError, match="names differ"):
        ema_update(Tiny(temb=True), Tiny(temb=False))
    with pytest.raises(ValueError, match="shape"):
        ema_update(Tiny(out=3), Tiny(out=4))
    with pytest.raises(TypeError, match="teacher"):
        ema_update("net", Tiny())
    with pytest.raises(ValueError, match="sources"):
        ema_average_into(Tiny(), [])
    with pytest.raises(TypeError, match=r"sources\[1\]"):
        ema_average_into(Tiny(), [Tiny(), 3])
    with pytest.raises(TypeError, match="skip"):
        ema_average_into(Tiny(), [Tiny()], skip=3)
