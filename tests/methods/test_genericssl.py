"""Tests for scdl_monai.methods.genericssl (GenericSSL / A&D, docs/methods.md#genericssl)."""

from functools import partial

import pytest
import torch
import torch.distributed as dist
from torch import nn

from scdl_monai.engines.trainer import SemiSupervisedTrainer
from scdl_monai.handlers.schedules import UnsupWeightSchedule
from scdl_monai.losses.segmentation import DiceCELoss
from scdl_monai.methods.base import MethodOutput
from scdl_monai.methods.genericssl import GenericSSL
from scdl_monai.networks.diffvnet import DiffVNet
from scdl_monai.weighting import DiffDW

from .conftest import random_batch

C = 3
SHAPE = (32, 32, 32)
SMALL = (32, 16, 16)  # bottleneck 2x1x1: batch norm needs > 1 value per channel at batch 1

batch = partial(random_batch, C, shape=SHAPE)


def make_method(seed=0, **kwargs):
    torch.manual_seed(seed)
    return GenericSSL(DiffVNet(out_channels=C, n_filters=4), num_classes=C, **kwargs)


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_one_step_runs_and_combines_the_terms():
    method = make_method().train()
    method.set_unsup_weight(2.5)
    image_l, label_l, image_u = batch(n_l=2, n_u=2)
    torch.manual_seed(1)
    out = method.train_step(None, image_l, label_l, image_u)
    assert isinstance(out, MethodOutput)
    assert sorted(out.terms) == ["loss_deno", "loss_diff", "loss_u", "unsup_weight"]
    assert all(torch.isfinite(v) for v in out.terms.values())
    expected = out.terms["loss_deno"] + out.terms["loss_diff"] + 2.5 * out.terms["loss_u"]
    assert torch.allclose(out.loss.detach(), expected, rtol=1e-6)
    assert out.pred.shape == (2, C, *SHAPE) and not out.pred.requires_grad
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.network.parameters())


def test_terms_are_the_reference_losses_and_diffdw_is_fed_by_d_xi():
    method = make_method().train()
    image_l, label_l, image_u = batch(n_l=2, n_u=1, shape=SMALL)
    terms = method.compute_losses(image_l, label_l, image_u)
    passes = terms.passes
    dice_ce = DiceCELoss(mode="reference")
    # x0 prediction of D_ξ used as logits (no MSE), unweighted
    assert torch.allclose(terms.loss_deno, dice_ce(passes.xi_logits_l, label_l))
    # DiffDW (no max-normalisation) updated once from argmax of D_ξ's detached prediction
    tracker = DiffDW(C, momentum=0.98, alpha=0.2, normalize=False)
    expected_w = tracker.update(passes.xi_logits_l.detach().argmax(1, keepdim=True), label_l)
    assert torch.allclose(terms.class_weight, expected_w)
    for name, buf in tracker.named_buffers():
        assert torch.allclose(getattr(method.difficulty, name), buf), name
    d = ((tracker.unlearn + 1e-8) / (tracker.learn + 1e-8)) ** 0.2
    assert torch.allclose(method.difficulty.weights, C * d * tracker.dice_weight)  # C·d·dw, max not forced to C
    assert not torch.isclose(method.difficulty.weights.max(), torch.tensor(float(C)))
    # the same weight in the CE and the Dice of D_ψ
    assert torch.allclose(terms.loss_diff, dice_ce(passes.psi_logits_l, label_l, weight=terms.class_weight))
    # D_θ learns from the fused pseudo-labels, unweighted
    assert passes.pseudo_label.shape == (1, 1, *SMALL) and passes.pseudo_label.dtype == torch.int64
    assert int(passes.pseudo_label.min()) >= 0 and int(passes.pseudo_label.max()) < C
    assert torch.allclose(terms.loss_u, dice_ce(passes.theta_logits_u, passes.pseudo_label))
    assert terms.timesteps.shape == (2,) and int(terms.timesteps.max()) < 1000


def test_ema_happens_before_the_forward_with_expected_arithmetic():
    method = make_method().train()
    net = method.network
    theta0, xi0, psi0 = params(net.decoder_theta), params(net.decoder_xi), params(net.decoder_psi)
    expected = {k: 0.99 * theta0[k] + 0.01 * (xi0[k] + psi0[k]) / 2 for k in theta0}
    seen = {}

    def record(module, args):
        if not seen:
            seen.update(params(module))

    handle = net.decoder_theta.register_forward_pre_hook(record)
    opt = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, weight_decay=3e-5, nesterov=True)
    opt.zero_grad()
    method.set_unsup_weight(1.0)
    method.train_step(None, *batch(shape=SMALL)).loss.backward()
    opt.step()
    handle.remove()
    assert set(seen) == set(expected)
    for k in expected:  # D_θ already averaged when it ran its forward
        assert torch.allclose(seen[k], expected[k], atol=1e-7), k
    after = params(net.decoder_theta)
    for k in expected:  # lr = 0: only the EMA changed θ
        assert torch.allclose(after[k], expected[k], atol=1e-7), k
    assert all(torch.equal(params(net.decoder_xi)[k], v) for k, v in xi0.items())
    assert all(torch.equal(params(net.decoder_psi)[k], v) for k, v in psi0.items())
    assert not torch.allclose(theta0["head.weight"], after["head.weight"])


def test_ema_touches_parameters_only_and_honours_skip():
    method = make_method()
    net = method.network
    names = method.ema_parameter_names()
    assert names == [n for n, _ in net.decoder_theta.named_parameters()]  # all 54 D_θ params match D_ξ/D_ψ
    assert not any("temb" in n for n in names)
    buffers = {k: v.clone() for k, v in net.decoder_theta.named_buffers()}
    with torch.no_grad():
        for decoder in (net.decoder_xi, net.decoder_psi):
            for name, buf in decoder.named_buffers():
                if buf.is_floating_point():
                    buf.add_(5.0)
    assert method.aggregate_decoders() == names
    assert all(torch.equal(v, dict(net.decoder_theta.named_buffers())[k]) for k, v in buffers.items())

    skipping = make_method(ema_skip=("head",))
    head = skipping.network.decoder_theta.head.weight.detach().clone()
    updated = skipping.aggregate_decoders()
    assert "head.weight" not in updated and len(updated) == len(names) - 2
    assert torch.equal(skipping.network.decoder_theta.head.weight, head)


def test_each_loss_reaches_only_its_own_decoder():
    method = make_method().train()
    net = method.network
    terms = method.compute_losses(*batch(shape=SMALL))
    groups = {
        "xi": net.decoder_xi,
        "psi": net.decoder_psi,
        "theta": net.decoder_theta,
        "time": net.time_embed,
        "stem": net.embedding,
        "stem_diff": net.embedding_diffusion,
        "encoder": net.encoder,
    }
    reached = {}
    for term in ("loss_deno", "loss_diff", "loss_u"):
        for group, module in groups.items():
            grads = torch.autograd.grad(
                getattr(terms, term), list(module.parameters()), retain_graph=True, allow_unused=True
            )
            reached[term, group] = any(g is not None and g.abs().sum() > 0 for g in grads)
    expected = {
        "loss_deno": {"xi", "time", "stem_diff", "encoder"},
        "loss_diff": {"psi", "stem", "encoder"},
        "loss_u": {"theta", "stem", "encoder"},
    }
    for term, groups_hit in expected.items():
        for group in groups:
            assert reached[term, group] == (group in groups_hit), (term, group)
    assert not terms.passes.pseudo_label.requires_grad and not terms.class_weight.requires_grad


def test_pseudo_labels_come_from_ddim_in_train_mode_without_grad():
    method = make_method().train()
    calls = {"xi": [], "psi": []}

    def recorder(name):
        return lambda module, args: calls[name].append((module.training, torch.is_grad_enabled()))

    hooks = [
        method.network.decoder_xi.register_forward_pre_hook(recorder("xi")),
        method.network.decoder_psi.register_forward_pre_hook(recorder("psi")),
    ]
    method.compute_losses(*batch(shape=SMALL))
    for h in hooks:
        h.remove()
    # D_ξ: 1 pass with grad (L_deno) + 10 DDIM steps without; D_ψ: labeled with grad, unlabeled without
    assert calls["xi"] == [(True, True)] + [(True, False)] * 10
    assert calls["psi"] == [(True, True), (True, False)]


def test_short_trainer_run_with_lr_zero_follows_the_ema_recurrence():
    method = make_method()
    net = method.network
    theta0, xi0, psi0 = params(net.decoder_theta), params(net.decoder_xi), params(net.decoder_psi)
    data_l = [{"image": x, "label": y} for x, y, _ in (batch(s, shape=SMALL) for s in range(2))]
    data_u = [{"image": u} for _, _, u in (batch(s + 10, shape=SMALL) for s in range(3))]
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    trainer = SemiSupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=data_l,
        unlabeled_data_loader=data_u,
        method=method,
        optimizer=optimizer,
        train_handlers=[UnsupWeightSchedule(method, w_max=method.unsup_weight_max, ramp_epochs=2)],
        decollate=False,
    )
    trainer.run()
    assert trainer.state.iteration == 4
    out = trainer.state.output
    for key in ("loss", "loss_deno", "loss_diff", "loss_u", "pred"):
        assert torch.isfinite(out[key]).all(), key
    assert out["pred"].shape == (1, C, *SMALL)
    # epoch 2 of 2 with the reference's one-epoch lag uses the ramp value of epoch 0: μ_max·e^-5
    assert float(method.unsup_weight) == pytest.approx(10.0 * torch.exp(torch.tensor(-5.0)).item())
    assert not torch.equal(method.difficulty.last_dice, torch.full((C,), 1e-8))
    m4 = 0.99**4  # four iterations with constant ξ, ψ: θ_4 = m⁴θ_0 + (1 − m⁴)(ξ + ψ)/2
    after = params(net.decoder_theta)
    for k in theta0:
        assert torch.allclose(after[k], m4 * theta0[k] + (1 - m4) * (xi0[k] + psi0[k]) / 2, atol=1e-6), k


def run_once(seed):
    method = make_method(seed=0).train()
    method.set_unsup_weight(1.0)
    opt = torch.optim.SGD(method.network.parameters(), lr=0.01, momentum=0.9)
    torch.manual_seed(seed)
    out = method.train_step(None, *batch(shape=SMALL))
    out.loss.backward()
    opt.step()
    return out, params(method.network)


def test_same_seed_same_step_different_seed_different_step():
    out_a, params_a = run_once(seed=3)
    out_b, params_b = run_once(seed=3)
    out_c, _ = run_once(seed=4)
    assert all(torch.equal(out_a.terms[k], out_b.terms[k]) for k in out_a.terms)
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert not torch.equal(out_a.terms["loss_u"], out_c.terms["loss_u"])


def test_state_dict_round_trip_restores_networks_and_tracker():
    method = make_method().train()
    method.set_unsup_weight(4.0)
    method.train_step(None, *batch(shape=SMALL))
    state = method.state_dict()
    assert {f"difficulty.{b}" for b in ("last_dice", "learn", "unlearn", "dice_weight", "weights")} <= set(state)
    assert "unsup_weight" in state and not any(k.startswith("_passes") for k in state)
    restored = make_method(seed=7)
    restored.load_state_dict(state)
    for k, v in restored.state_dict().items():
        assert torch.equal(v, state[k]), k
    x = batch(seed=5, shape=SMALL)[0]
    method.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(method.inference_network()(x), restored.inference_network()(x))


def test_inference_network_is_d_theta():
    method = make_method().eval()
    net = method.inference_network()
    assert net is method.network
    x = batch(shape=SMALL)[0]
    with torch.no_grad():
        assert torch.equal(net(x), method.network.theta_logits(x))


def test_errors_name_the_argument():
    net = DiffVNet(out_channels=C, n_filters=4)
    with pytest.raises(TypeError, match="DiffVNet hooks"):
        GenericSSL(nn.Conv3d(1, C, 1), num_classes=C)
    with pytest.raises(ValueError, match="out_channels=3"):
        GenericSSL(net, num_classes=4)
    with pytest.raises(ValueError, match="ema_momentum"):
        GenericSSL(net, num_classes=C, ema_momentum=1.5)
    with pytest.raises(ValueError, match="unsup_weight_max"):
        GenericSSL(net, num_classes=C, unsup_weight_max=-1)
    with pytest.raises(ValueError, match="loss_mode"):
        GenericSSL(net, num_classes=C, loss_mode="nnunet")
    with pytest.raises(ValueError, match="diffusion"):
        GenericSSL(net, num_classes=C, diffusion=object())
    with pytest.raises(ValueError, match="would do nothing"):
        GenericSSL(net, num_classes=C, ema_skip=("",))
    method = GenericSSL(net, num_classes=C)
    image_l, label_l, image_u = batch(shape=SMALL)
    with pytest.raises(ValueError, match="image_u"):
        method(image_l, label_l, None)
    with pytest.raises(ValueError, match=r"label_l values .* got \[3, 3\]"):
        method(image_l, torch.full_like(label_l, 3), image_u)
    with pytest.raises(ValueError, match="label_l must have shape"):
        method(image_l, label_l[:, :, :8], image_u)


def test_wrap_ddp_runs_all_passes_in_one_ddp_forward(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        method = make_method().train()
        keys = list(method.state_dict())
        assert method.wrap_ddp() is method
        assert list(method.state_dict()) == keys
        assert method.networks()["network"] is method.network
        assert method.net("network") is method.network
        method.set_unsup_weight(1.0)
        method.train_step(None, *batch(shape=SMALL)).loss.backward()
        assert all(p.grad is not None for p in method.network.parameters())
        method.eval()
        assert not method._ddp_wrappers["passes"].training and not method.network.training
    finally:
        dist.destroy_process_group()
