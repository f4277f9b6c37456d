"""Tests for scdl_monai.methods.scdl (SCDL plug-in around a baseline method)."""

import copy
import importlib
from unittest import mock

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from torch import nn

from scdl_monai.engines.trainer import SemiSupervisedTrainer
from scdl_monai.methods.base import LogitMean, MethodOutput
from scdl_monai.methods.cps import CPS
from scdl_monai.methods.scdl import SCDLMethod, warmup_factor
from scdl_monai.methods.supervised import Supervised
from scdl_monai.networks.class_distribution import token_weights_from_pseudo_label
from scdl_monai.networks.prior_injection import SCDLNetwork, wrap_backbone
from scdl_monai.networks.vnet import VNet

C = 3
SHAPE = (32, 32, 32)
SCDL_KW = {"z_dim": 8, "num_proxy_samples": 3}


def wrap(net, seed=1, **wrapper):
    """The backbone built into an SCDL wrapper (as the bundle overlay does)."""
    wrapper.setdefault("scdl_kwargs", SCDL_KW)
    return SCDLNetwork(net, num_classes=C, init_seed=seed, **wrapper)


def cps(seed=0, scdl=True, a_only=False, wrapper=None, **vnet_kwargs):
    """CPS whose networks are SCDL wrappers (``scdl=False``: the plain baseline)."""
    torch.manual_seed(seed)
    a, b = VNet(out_channels=C, n_filters=4, **vnet_kwargs), VNet(out_channels=C, n_filters=4, **vnet_kwargs)
    if scdl:
        a = wrap(a, 1, **(wrapper or {}))
        b = b if a_only else wrap(b, 2, **(wrapper or {}))
    return CPS(a, b)


def scdl(base, **kwargs):
    kwargs.setdefault("warmup_iters", 1000)
    return SCDLMethod(base, **kwargs)


def batch(seed=0, n_l=1, n_u=1):
    g = torch.Generator().manual_seed(seed)
    image_l = torch.randn(n_l, 1, *SHAPE, generator=g)
    label_l = torch.zeros(n_l, 1, *SHAPE, dtype=torch.long)
    label_l[:, :, 4:20, 4:20, 4:20] = 1  # every class present in the labeled patch
    label_l[:, :, 20:28, 8:30, 2:12] = 2
    image_u = torch.randn(n_u, 1, *SHAPE, generator=g)
    return image_l, label_l, image_u


# ---------------------------------------------------------------- switched off = baseline, bit for bit
def _train(method, steps=3):
    g = torch.Generator().manual_seed(11)
    items = [{"image": torch.randn(1, *SHAPE, generator=g), "label": torch.randint(0, C, (1, *SHAPE), generator=g)} for _ in range(3)]
    unl = [{"image": torch.randn(1, *SHAPE, generator=g)} for _ in range(3)]
    # no reseeding here: shuffling and dropout draw from the global stream left by the method's construction
    lab_loader = DataLoader(Dataset(items), batch_size=1, shuffle=True)
    unl_loader = DataLoader(Dataset(unl), batch_size=1, shuffle=True)
    groups = method.param_groups() if isinstance(method, SCDLMethod) else method.parameters()
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, weight_decay=3e-5)
    losses = []
    trainer = SemiSupervisedTrainer("cpu", 1, lab_loader, unl_loader, method, opt, epoch_length=steps, decollate=False)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    method.set_unsup_weight(0.1)
    trainer.run()
    return losses


@pytest.mark.parametrize("off", [{"enabled": False}, {"proxy_weight": 0.0, "sac_weight": 0.0}])
def test_switched_off_reproduces_the_baseline_bit_for_bit(off):
    baseline = cps(scdl=False, has_dropout=True)
    losses_ref = _train(baseline)
    # SCDL blocks are built without touching the global RNG; the baseline's init_b skips them
    plugged = scdl(cps(has_dropout=True, wrapper={"injection": "none"}), **off)
    losses = _train(plugged)
    assert losses == losses_ref
    for name in ("network_a", "network_b"):
        ref = getattr(baseline, name).state_dict()
        got = plugged.networks()[name].backbone.state_dict()
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref), name


@pytest.mark.parametrize("method_name", ["cps", "dhc"])
@pytest.mark.parametrize("injection", ["all_stages", "bottleneck", "head"])
def test_scdl_x_starts_as_x(method_name, injection):
    """Zero-initialised injection: at step 0 the SCDL networks compute exactly the baseline's logits."""
    from scdl_monai.methods.dhc import DHC

    def build(scdl_on):
        torch.manual_seed(4)
        nets = [VNet(out_channels=C, n_filters=4) for _ in range(2)]
        if scdl_on:
            nets = [wrap(n, k + 1, injection=injection) for k, n in enumerate(nets)]
        return DHC(*nets, num_classes=C) if method_name == "dhc" else CPS(*nets)

    x, y, u = batch(n_l=2, n_u=2)
    baseline = build(False)
    method = scdl(build(True), warmup_iters=0)
    for name in ("network_a", "network_b"):
        net = method.networks()[name]
        assert all(torch.count_nonzero(p) == 0 for p in net.scdl.injection_projections.parameters())
        image = torch.cat([x, u])
        assert torch.equal(net(image), getattr(baseline, name)(image)), name
    ref = baseline(x, y, u)
    out = method(x, y, u)
    assert torch.equal(out.pred, ref.pred)
    for key in ("loss_sup", "loss_cps"):
        assert torch.equal(out.terms[key], ref.terms[key]), key
    assert out.terms["loss_scdl"] > 0
    out.loss.backward()  # the projections learn from the first step on
    assert all(p.grad.abs().sum() > 0 for p in method.network_a.scdl.injection_projections.parameters())


# ---------------------------------------------------------------- loss terms and warm-up
def test_warmup_factor_values():
    assert [warmup_factor(i, 4) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    assert torch.allclose(warmup_factor(torch.tensor([0, 1, 7]), 4), torch.tensor([0.25, 0.5, 1.0]))


def test_terms_are_finite_and_the_warmup_ramps_linearly():
    method = scdl(cps(), warmup_iters=4, proxy_weight=0.3, sac_weight=0.1)
    method.set_unsup_weight(0.2)
    x, y, u = batch()
    for step in range(3):
        out = method(x, y, u)
        t = out.terms
        ramp = (step + 1) / 4
        assert t["scdl_warmup"].item() == pytest.approx(ramp)
        assert all(torch.isfinite(v).all() for v in t.values())
        assert t["loss_scdl_proxy"].item() == pytest.approx(ramp * 0.3 * (t["scdl_p2e"] + 0.1 * t["scdl_e2p"]).item(), rel=1e-5)
        assert t["loss_scdl_sac"].item() == pytest.approx(ramp * 0.1 * t["scdl_sac"].item(), rel=1e-5)
        assert t["loss_scdl"].item() == pytest.approx((t["loss_scdl_proxy"] + t["loss_scdl_sac"]).item(), rel=1e-6)
        base = t["loss_sup"] + 0.2 * t["loss_cps"]
        assert out.loss.item() == pytest.approx((base + t["loss_scdl"]).item(), rel=1e-5)
        assert 0.0 <= t["scdl_sac"].item() <= 4.0  # two networks, each 1 - cos in [0, 2]
        out.loss.backward()
    assert method.scdl_iteration.item() == 3


def test_sac_gradient_reaches_only_the_proxy_means():
    method = scdl(cps(wrapper={"injection": "none"}), proxy_weight=0.0, sac_weight=1.0, warmup_iters=0)
    x, y, u = batch()
    out = method(x, y, u)
    out.loss.backward()
    for net in method.wrapped_networks().values():
        grad = net.scdl.proxies.grad
        d = net.scdl.z_dim
        assert grad[:, :d].abs().sum() > 0  # μ
        assert torch.count_nonzero(grad[:, d:]) == 0  # σ: not in L_SAC, proxy term weighted 0
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in net.scdl.projector.parameters())


def test_masked_image_and_feature_pool_both_run_and_masked_keeps_bn_statistics():
    x, y, u = batch(n_l=2, n_u=2)
    first = scdl(cps(), sac_mode="feature_pool", warmup_iters=0)
    second = copy.deepcopy(first)
    second.sac_mode = "masked_image"
    torch.manual_seed(1)  # same proxy samples in both steps
    out_fp = first(x, y, u)
    torch.manual_seed(1)
    out_mi = second(x, y, u)
    for out in (out_fp, out_mi):
        assert torch.isfinite(out.loss) and out.terms["scdl_sac"] > 0
    # masked forwards ran with BN in eval mode: running stats identical to the feature_pool step
    buffers_fp = dict(first.named_buffers())
    for name, buf in second.named_buffers():
        if "running" in name or "num_batches" in name:
            assert torch.equal(buf, buffers_fp[name]), name
    assert second.training and all(m.training for m in second.modules() if isinstance(m, nn.BatchNorm3d))
    assert not torch.allclose(out_fp.terms["scdl_sac"], out_mi.terms["scdl_sac"])


def test_pseudo_label_token_weights_and_paper_forms_run():
    method = scdl(cps(), unlabeled_target="pseudo_label", p2e_form="paper", e2p_form="paper", warmup_iters=0)
    out = method(*batch())
    assert torch.isfinite(out.loss) and out.terms["scdl_p2e"] > 0


# ---------------------------------------------------------------- optimizer groups, resume, wrapping
def test_param_groups_hold_every_scdl_parameter_once_with_wd_1e4():
    method = scdl(cps())
    groups = method.param_groups()
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=3e-5)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(method.parameters()))
    scdl_ids = {id(p) for net in method.wrapped_networks().values() for p in net.scdl_parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == scdl_ids
    assert opt.param_groups[1]["weight_decay"] == 1e-4 and opt.param_groups[0]["weight_decay"] == 3e-5
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[1]["lr"] == 0.01


def test_resume_restores_the_warmup_counter():
    method = scdl(cps(), warmup_iters=10)
    x, y, u = batch()
    for _ in range(2):
        method(x, y, u)
    state = method.state_dict()
    assert state["scdl_iteration"].item() == 2
    resumed = scdl(cps(seed=3), warmup_iters=10)  # different initial weights, all overwritten
    resumed.load_state_dict(state)
    assert resumed.scdl_iteration.item() == 2
    assert resumed(x, y, u).terms["scdl_warmup"].item() == pytest.approx(0.3)


def test_a_only_wraps_only_network_a():
    method = scdl(cps(a_only=True), networks="A_only")
    assert method.targets == ("network_a",)
    with pytest.raises(ValueError, match="networks='all'"):
        scdl(cps(a_only=True))  # the config and the wrapping disagree
    with pytest.raises(ValueError, match="networks"):
        scdl(cps(), networks="B_only")
    assert isinstance(method.network_a, SCDLNetwork) and type(method.network_b) is VNet
    out = method(*batch())
    assert torch.isfinite(out.terms["loss_scdl"])
    groups = method.param_groups()
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.network_a.scdl_parameters()}


@pytest.mark.parametrize("use_prior", [True, False])
def test_inference_network_uses_priors_per_config(use_prior):
    method = scdl(cps(wrapper={"use_prior_at_inference": use_prior})).eval()
    for net in method.wrapped_networks().values():
        for proj in net.scdl.injection_projections:
            nn.init.normal_(proj.weight)
    infer = method.inference_network()
    x = batch()[0]
    with torch.no_grad():
        plain = LogitMean([method.network_a.backbone, method.network_b.backbone])(x)
        got = infer(x)
    assert got.shape == (1, C, *SHAPE)
    assert torch.equal(got, plain) != use_prior


def test_delegates_to_the_base_method():
    base = cps()
    method = scdl(base)
    method.set_unsup_weight(0.07)
    assert base.unsup_weight.item() == pytest.approx(0.07) and method.unsup_weight.item() == pytest.approx(0.07)
    assert method.class_weights is not None  # base attribute reached through the wrapper
    assert method.network_names == ("network_a", "network_b")
    assert method.net("network_a") is base.network_a


# ---------------------------------------------------------------- record selection and errors
class DoubledSupervised(Supervised):
    """Calls the network on the unlabeled batch first, then on the labeled one."""

    def forward(self, image_l, label_l, image_u=None):
        self.net("network")(torch.cat([image_u] * 5))
        logits = self.net("network")(image_l)
        loss = self.loss(logits, label_l)
        return MethodOutput(loss, logits.detach(), {"loss_sup": loss.detach()})


def test_a_call_without_the_batch_layout_raises_and_record_call_selects_explicitly():
    torch.manual_seed(0)
    x, y, u = batch(n_l=2)
    method = scdl(DoubledSupervised(wrap(VNet(out_channels=C, n_filters=4))))
    with pytest.raises(ValueError, match="record_call"):
        method(x, y, u)  # call 0 holds 5 images: neither B_l nor B_l + B_u
    method = scdl(DoubledSupervised(wrap(VNet(out_channels=C, n_filters=4))), record_call=1)
    assert torch.isfinite(method(x, y, u).terms["loss_scdl"])
    with pytest.raises(ValueError, match="record_call=2"):
        scdl(DoubledSupervised(wrap(VNet(out_channels=C, n_filters=4))), record_call=2)(x, y, u)


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="sac_mode"):
        scdl(cps(), sac_mode="masked")
    with pytest.raises(ValueError, match="warmup_iters"):
        scdl(cps(), warmup_iters=-1)
    with pytest.raises(ValueError, match="warmup_fraction"):
        scdl(cps(), warmup_fraction=1.5)
    with pytest.raises(ValueError, match="proxy_weight"):
        scdl(cps(), proxy_weight=-0.3)
    with pytest.raises(ValueError, match="token_scope"):
        scdl(cps(), token_scope="unlabeled")
    with pytest.raises(ValueError, match="unlabeled_target"):
        scdl(cps(), unlabeled_target="peer")
    with pytest.raises(ValueError, match="balanced_p2e"):
        scdl(cps(), balanced_p2e=True, p2e_form="paper")
    with pytest.raises(ValueError, match="SCDLNetwork"):
        scdl(cps(scdl=False))  # nothing wrapped
    with pytest.raises(ValueError, match="num_classes"):
        scdl(cps(), num_classes=C + 1)
    with pytest.raises(TypeError, match="base_method"):
        SCDLMethod(nn.Linear(1, 1), num_classes=C)
    with pytest.raises(ValueError, match="warmup_iters"):  # a warm-up fraction needs the engine's run length
        SCDLMethod(cps())(*batch())


# ---------------------------------------------------------------- other baselines
def test_plugs_into_dhc_and_ga_cps():
    dhc_mod = importlib.import_module("scdl_monai.methods.dhc")
    ga_mod = importlib.import_module("scdl_monai.methods.ga_cps")
    x, y, u = batch()
    torch.manual_seed(0)
    for base in (
        dhc_mod.DHC(wrap(VNet(out_channels=C, n_filters=4), 1), wrap(VNet(out_channels=C, n_filters=4), 2), num_classes=C),
        ga_mod.GACPS(wrap(VNet(out_channels=C, n_filters=4), 1), wrap(VNet(out_channels=C, n_filters=4), 2)),
    ):
        method = scdl(base, warmup_iters=0)
        out = method(x, y, u)
        assert torch.isfinite(out.loss) and out.terms["loss_scdl"] > 0, type(base).__name__
        out.loss.backward()


@pytest.mark.parametrize("injection", ["head", "all_stages"])
def test_plugs_into_magicnet_with_an_scdl_teacher(injection):
    mn_mod = importlib.import_module("scdl_monai.methods.magicnet")
    net_mod = importlib.import_module("scdl_monai.networks.magicnet")
    torch.manual_seed(0)
    backbone = wrap(VNet(out_channels=C, n_filters=4), injection=injection)
    student = net_mod.MagicNetwork(backbone, cube_size=16, patch_size=32, hidden_features=16)
    method = scdl(mn_mod.MagicNet(student, num_classes=C), warmup_iters=0)
    assert method.targets == ("student.backbone",)
    # the EMA teacher is a deep copy of the wrapper, made by the baseline itself
    assert isinstance(method.teacher, SCDLNetwork) and not any(p.requires_grad for p in method.teacher.parameters())
    for proj in method.student.backbone.scdl.injection_projections:
        nn.init.normal_(proj.weight)  # a learnt prior, so that its presence shows in the outputs
    with mock.patch.object(backbone, "decode", wraps=backbone.decode) as decode:
        out = method(*batch(n_l=2, n_u=2))
    # plain pass, cross-image pass and within-image cube pass all decode through the wrapper (prior added)
    assert [c.args[0][0].shape[0] for c in decode.call_args_list] == [4, 4, 4 * 8]
    assert torch.isfinite(out.terms["loss_scdl"]) and out.terms["loss_scdl"] > 0
    out.loss.backward()
    method.update_teacher(0)  # EMA over matching names, SCDL parameters included
    assert torch.equal(method.teacher.scdl.proxies, method.student.backbone.scdl.proxies)
    assert isinstance(method.inference_network(), SCDLNetwork)
    # the teacher (train mode, no_grad) runs its SCDL block deterministically: same pseudo-labels twice
    x = batch()[0]
    with torch.no_grad():
        assert torch.equal(method.teacher(x), method.teacher(x))
    teacher = copy.deepcopy(method.teacher).requires_grad_(True)
    assert not torch.equal(teacher(x), teacher(x))  # with gradients: proxy samples, token noise, dropout


# ---------------------------------------------------------------- optimizer hook and bundle overlay
def test_add_scdl_param_groups_moves_scdl_parameters_into_their_own_group():
    method = scdl(cps())
    # an optimizer given every parameter (as MagicNet's student.parameters() would be)
    opt = torch.optim.SGD(method.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=3e-5)
    from scdl_monai.methods.scdl import add_scdl_param_groups

    assert add_scdl_param_groups(opt, method) is opt
    add_scdl_param_groups(opt, method)  # idempotent
    assert len(opt.param_groups) == 2
    scdl_ids = {id(p) for net in method.wrapped_networks().values() for p in net.scdl_parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == scdl_ids
    assert not scdl_ids & {id(p) for p in opt.param_groups[0]["params"]}
    g = opt.param_groups[1]
    assert (g["weight_decay"], g["lr"], g["momentum"], g["nesterov"]) == (1e-4, 0.02, 0.9, True)
    # an lr factor scales the SCDL group; a scheduler built afterwards scales it like the others
    opt = add_scdl_param_groups(torch.optim.SGD(method.parameters(), lr=0.02), method, scdl_lr_factor=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.001])
    assert sched.base_lrs == pytest.approx([0.02, 0.002])


def _files(kind, method):
    """The bundle components of ``kind`` for ``method`` on Synapse with the SCDL overlay (native protocol)."""
    from scdl_monai.bundles import component_files

    return component_files(kind, method, "synapse", protocol="native", scdl=True)


TINY = {"n_filters": 4, "scdl_block#z_dim": 8, "scdl_block#num_proxy_samples": 3, "device": "$torch.device('cpu')"}


def _parser(files, overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in files]))
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.mark.parametrize("method_name", ["cps", "dhc", "ga_cps", "magicnet", "genericssl"])
def test_scdl_overlay_composes_on_baselines(method_name):
    extra = {"location_hidden_features": 16} if method_name == "magicnet" else {}
    train = _parser(_files("train", method_name), {**TINY, **extra})
    method = train.get_parsed_content("method")
    expected = {"magicnet": ("student.backbone",), "genericssl": ("network",)}.get(method_name, ("network_a", "network_b"))
    assert isinstance(method, SCDLMethod) and method.targets == expected
    # the wrappers are built around the backbones in the config: no copy was guessed afterwards
    assert method.wrapped_networks()[expected[0]] is train.get_parsed_content("network")
    if method_name == "magicnet":
        assert isinstance(method.teacher, SCDLNetwork)
    opt = train.get_parsed_content("optimizer")
    sched = train.get_parsed_content("lr_scheduler")
    scdl_group = [g for g in opt.param_groups if g.get("scdl")]
    assert len(scdl_group) == 1 and scdl_group[0]["weight_decay"] == 1e-4
    scdl_ids = {id(p) for net in method.wrapped_networks().values() for p in net.scdl_parameters()}
    assert {id(p) for p in scdl_group[0]["params"]} == scdl_ids
    assert len(sched.optimizer.param_groups) == len(opt.param_groups)

    inference = _parser(_files("inference", method_name), TINY)  # the same scdl.json overlay
    standalone = inference.get_parsed_content("network")
    # the checkpoint of the training-time inference network loads strictly into the standalone one
    standalone.load_state_dict(train.get_parsed_content("inference_network").state_dict(), strict=True)


def test_every_switch_is_a_top_level_override():
    files = _files("train", "dhc")
    overrides = {
        **TINY, "scdl_networks": "A_only", "scdl_token_scope": "labeled", "scdl_proxy_weight": 0.03,
        "scdl_sac_weight": 0.01, "scdl_unlabeled_target": "peer_pseudo_label", "scdl_pseudo_label_threshold": 0.8,
        "scdl_token_stage": 2, "scdl_balanced_p2e": True, "scdl_detach_prior": True, "scdl_lr_factor": 0.5,
        "scdl_warmup_fraction": 0.1, "scdl_injection": "head",
    }  # fmt: skip
    train = _parser(files, overrides)
    method = train.get_parsed_content("method")
    assert method.targets == ("network_a",) and type(method.network_b) is VNet
    net = method.network_a
    assert (net.token_stage, net.detach_prior, net.injection) == (2, True, "head")
    assert (method.token_scope, method.proxy_weight, method.sac_weight) == ("labeled", 0.03, 0.01)
    assert (method.unlabeled_target, method.pseudo_label_threshold, method.warmup_fraction) == ("peer_pseudo_label", 0.8, 0.1)
    assert method.proxy_loss.p2e.balanced
    opt = train.get_parsed_content("lr_scheduler").optimizer  # the scheduler follows the optimizer with the SCDL group
    base_group, scdl_group = opt.param_groups
    assert scdl_group["lr"] == pytest.approx(0.5 * base_group["lr"])
    x, y, u = batch()
    with torch.no_grad():
        assert method.network_a.encoder_scdl(x).prior.shape[2:] == (8, 8, 8)  # x3: patch/4 tokens


# ---------------------------------------------------------------- DDP (2 CPU processes, gloo)
DDP_SCRIPT = """
import os, sys, socket, torch, torch.distributed as dist, torch.multiprocessing as mp
sys.path.insert(0, {tests!r})

def run(rank, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    import test_scdl as T
    for injection in ("all_stages", "none"):
        method = T.scdl(T.cps(wrapper={{"injection": injection}}), warmup_iters=0).wrap_ddp()
        opt = torch.optim.SGD(method.param_groups(), lr=0.1)
        method(*T.batch(seed=rank)).loss.backward()  # different data per rank
        opt.step()
        flat = torch.cat([p.detach().flatten() for p in method.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1]), injection
    if rank == 0:
        print("DDP_OK")
    dist.destroy_process_group()

if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(port,), nprocs=2)
"""


def test_ddp_two_processes_keep_ranks_in_sync(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp_scdl.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).resolve().parent)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert "DDP_OK" in result.stdout, result.stderr[-3000:]


def _genericssl(seed=0, scdl_on=True, **wrapper):
    wrapper.setdefault("scdl_kwargs", SCDL_KW)
    gssl = importlib.import_module("scdl_monai.methods.genericssl")
    diffvnet = importlib.import_module("scdl_monai.networks.diffvnet")
    torch.manual_seed(seed)
    network = diffvnet.DiffVNet(out_channels=C, n_filters=4)
    return gssl.GenericSSL(wrap_backbone(network, enabled=scdl_on, num_classes=C, init_seed=1, **wrapper), num_classes=C)


def test_plugs_into_genericssl_tokens_from_the_shared_encoder_prior_into_d_theta():
    method = scdl(_genericssl(), warmup_iters=0)
    assert method.targets == ("network",) and method.labeled_pass == "encoder"  # "auto" -> the base's choice
    net = method.wrapped_networks()["network"]
    x, y, u = batch(n_l=2, n_u=2)
    out = method.train_step(None, x, y, u)
    assert torch.isfinite(out.loss) and out.terms["loss_scdl"] > 0 and out.terms["scdl_p2e"] > 0
    out.loss.backward()
    # the proxy loss trains the SCDL block and, through the labeled tokens, the shared encoder
    assert net.scdl.proxies.grad is not None and net.scdl.proxies.grad.abs().sum() > 0
    assert net.backbone.encoder.stages[2].units[0].conv.weight.grad.abs().sum() > 0
    # the prior reaches D_theta: once the (zero-initialised) projections have learnt, the inference
    # output differs from the bare DiffVNet's
    for proj in net.scdl.injection_projections:
        nn.init.normal_(proj.weight)
    net.eval()
    with torch.no_grad():
        assert not torch.allclose(net(x), net.backbone(x))


def test_genericssl_recorded_labeled_pass_fails_with_a_hint():
    method = scdl(_genericssl(), labeled_pass="recorded", warmup_iters=0)
    with pytest.raises(ValueError, match="labeled_pass='encoder'"):  # D_theta's call holds the 3 unlabeled images
        method.train_step(None, *batch(n_l=2, n_u=3))


def test_genericssl_switched_off_is_the_baseline():
    x, y, u = batch(n_l=2, n_u=2)
    ref = _genericssl(seed=3, scdl_on=False)
    torch.manual_seed(5)
    expected = ref.train_step(None, x, y, u)
    method = scdl(_genericssl(seed=3, injection="none"), proxy_weight=0.0, sac_weight=0.0)
    torch.manual_seed(5)
    got = method.train_step(None, x, y, u)
    assert torch.equal(got.loss.detach(), expected.loss.detach())
    assert torch.equal(got.pred, expected.pred)


# ---------------------------------------------------------------- token scope and unlabeled targets
def _proxy_inputs(method, x, y, u):
    with mock.patch.object(method.proxy_loss, "terms", wraps=method.proxy_loss.terms) as terms:
        out = method(x, y, u)
    return out, [c.args for c in terms.call_args_list]


def test_token_scope_labeled_uses_only_labeled_tokens():
    x, y, u = batch(n_l=1, n_u=2)
    _, calls = _proxy_inputs(scdl(cps(), warmup_iters=0), x, y, u)
    assert [c[0].shape[0] for c in calls] == [3, 3]  # A and B: labeled + unlabeled samples
    _, calls = _proxy_inputs(scdl(cps(), warmup_iters=0, token_scope="labeled"), x, y, u)
    assert [c[0].shape[0] for c in calls] == [1, 1]


def test_peer_pseudo_labels_come_from_the_other_network_with_a_threshold():
    x, y, u = batch(n_l=1, n_u=2)
    torch.manual_seed(2)
    labeled = scdl(cps(), warmup_iters=0, token_scope="labeled")(x, y, u)
    torch.manual_seed(2)
    method = scdl(cps(), warmup_iters=0, unlabeled_target="peer_pseudo_label", pseudo_label_threshold=1.0)
    assert method.peers == {"network_a": "network_b", "network_b": "network_a"}
    out, calls = _proxy_inputs(method, x, y, u)
    masks = [c[4] for c in calls]
    assert all(m.shape == (3, 64) and m[:1].all() and not m[1:].any() for m in masks)  # nothing is that confident
    assert torch.allclose(out.terms["scdl_p2e"], labeled.terms["scdl_p2e"], atol=1e-6)
    # with a reachable threshold the peer's argmax becomes the target of the unlabeled tokens
    method = scdl(cps(a_only=True), networks="A_only", warmup_iters=0, unlabeled_target="peer_pseudo_label",
                  pseudo_label_threshold=0.0)
    with mock.patch.object(method.proxy_loss, "terms", wraps=method.proxy_loss.terms) as terms:
        with torch.no_grad():
            peer_logits = method.network_b(torch.cat([x, u]))
        method(x, y, u)
    weights = terms.call_args_list[0].args[1]
    expected = token_weights_from_pseudo_label(peer_logits[1:], (4, 4, 4))
    assert torch.allclose(weights[1:], expected)
    with pytest.raises(ValueError, match="two networks"):
        scdl(_genericssl(), unlabeled_target="peer_pseudo_label")


def test_warmup_is_a_fraction_of_the_engine_run():
    method = scdl(cps(), warmup_iters=None, warmup_fraction=0.25)
    engine = type("E", (), {"state": type("S", (), {"max_epochs": 2, "epoch_length": 8})()})()
    assert method.warmup_length(engine) == 4
    assert method.train_step(engine, *batch()).terms["scdl_warmup"].item() == pytest.approx(0.25)
    assert scdl(cps(), warmup_iters=None, warmup_fraction=0.0).warmup_length() == 0
