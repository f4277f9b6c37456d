"""Tests for scdl_monai.engines.precision, policy_inferer and cpu_bf16 (docs/performance.md): policy resolution, memory format, guard, trainer, inferer."""

import json
import logging
import subprocess
import sys

import pytest
import torch
from ignite.engine import Events
from monai.inferers import SlidingWindowInferer
from torch.utils.data import DataLoader

from scdl_monai.engines.trainer import SemiSupervisedTrainer
from scdl_monai.losses.segmentation import DiceCELoss, as_float32
from scdl_monai.methods.supervised import Supervised
from scdl_monai.networks.vnet import VNet
from scdl_monai.engines.policy_inferer import PolicyInferer
from scdl_monai.engines.precision import BF16ConvGuard, PrecisionPolicy, as_policy, cpu_bf16_support

from ..conftest import REPO_ROOT

C = 3
SHAPE = (16, 16, 16)
CPU_BF16 = cpu_bf16_support()[0]
needs_cpu_bf16 = pytest.mark.skipif(not CPU_BF16, reason=f"no CPU bf16 here: {cpu_bf16_support()[1]}")


def tiny_vnet(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("norm", "group")
    kwargs.setdefault("num_groups", 4)
    return VNet(out_channels=C, n_filters=4, **kwargs)


def multi_channel_weight(net):
    """A conv weight whose layout is observable (C_in > 1: a 1-channel tensor is both layouts at once)."""
    return next(p for p in net.parameters() if p.ndim == 5 and p.shape[1] > 1)


def recycle_nan_memory():
    """Leave NaN in freed allocator blocks: a kernel reading uninitialised memory then returns NaN."""
    for numel in (1 << 10, 1 << 14, 1 << 18):
        junk = torch.full((numel,), float("nan"))
        del junk
        junk = torch.full((numel,), float("nan"), dtype=torch.bfloat16)
        del junk


# ---------------------------------------------------------------- resolution and fallbacks
def test_fp16_on_cpu_falls_back_to_fp32_with_logged_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="scdl_monai.engines.precision"):
        policy = PrecisionPolicy("fp16", channels_last=True).resolve("cpu")
    assert (policy.precision, policy.requested, policy.dtype) == ("fp32", "fp16", torch.float32)
    assert not policy.autocast_enabled and not policy.use_grad_scaler and not policy.conv_guard
    assert policy.channels_last  # the memory format is independent of the precision fallback
    assert "fp16 requested on 'cpu' -> fp32" in caplog.text and "loss scaling" in caplog.text
    assert policy.notes and "fp16 requested" in policy.notes[0]
    with policy.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_without_cpu_support_falls_back_to_fp32_with_warning(caplog):
    # oneDNN switched off is a real "no usable bf16" condition on any machine
    with torch.backends.mkldnn.flags(enabled=False), caplog.at_level(logging.WARNING, logger="scdl_monai.engines.precision"):
        policy = PrecisionPolicy("bf16").resolve("cpu")
    assert policy.precision == "fp32" and policy.requested == "bf16" and not policy.conv_guard
    assert "bf16 requested on 'cpu' -> fp32" in caplog.text and "mkldnn.enabled is False" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_request_without_cuda_falls_back(precision, caplog):
    with caplog.at_level(logging.WARNING, logger="scdl_monai.engines.precision"):
        policy = PrecisionPolicy(precision).resolve("cuda:0")
    assert policy.precision == "fp32" and policy.device_type == "cuda"
    assert "CUDA is not available" in caplog.text


@needs_cpu_bf16
def test_bf16_on_capable_cpu_is_kept_with_guard(caplog):
    with caplog.at_level(logging.WARNING, logger="scdl_monai.engines.precision"):
        policy = PrecisionPolicy("bfloat16", channels_last=True).resolve("cpu")
    assert caplog.text == ""  # nothing fell back
    assert (policy.precision, policy.dtype, policy.conv_guard) == ("bf16", torch.bfloat16, True)
    assert any("conv3d weight-gradient defect" in n for n in policy.notes)
    assert PrecisionPolicy("bf16", conv_guard=False).resolve("cpu").conv_guard is False
    with policy.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_channels_last_for_1d_networks_is_disabled_with_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="scdl_monai.engines.precision"):
        policy = PrecisionPolicy(channels_last=True, spatial_dims=1).resolve("cpu")
    assert not policy.channels_last and "1-D network" in caplog.text


def test_names_errors_and_coercion():
    assert PrecisionPolicy(torch.float16).precision == "fp16"
    assert PrecisionPolicy("Half").precision == "fp16"
    assert as_policy("bf16", "cpu").requested == "bf16"
    assert as_policy({"precision": "fp32", "channels_last": True}).channels_last
    assert as_policy(None).precision == "fp32" and as_policy(None).resolved
    assert PrecisionPolicy.from_amp(False, torch.bfloat16).precision == "fp32"
    assert PrecisionPolicy.from_amp(True, None, device="cpu").precision == "bf16"
    assert PrecisionPolicy.from_amp(True, None, device="cuda").precision == "fp16"
    with pytest.raises(ValueError, match="precision must be one of .* got 'fp8'"):
        PrecisionPolicy("fp8")
    # the command-line spelling of a bool (`--channels_last true` arrives as a string) is accepted
    assert PrecisionPolicy(channels_last="true").channels_last is True
    assert PrecisionPolicy(channels_last="False").channels_last is False
    with pytest.raises(ValueError, match="channels_last` must be true or false, got 'maybe'"):
        PrecisionPolicy(channels_last="maybe")
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2, 3 or null, got 4"):
        PrecisionPolicy(spatial_dims=4)
    with pytest.raises(ValueError, match="device must be a torch device"):
        PrecisionPolicy(device="gpu0")
    with pytest.raises(TypeError, match="got int"):
        as_policy(3)


# ---------------------------------------------------------------- memory format
def test_prepare_module_and_input_use_channels_last():
    net = tiny_vnet()
    params_before = {name: p for name, p in net.named_parameters()}
    state_before = {k: v.clone() for k, v in net.state_dict().items()}
    policy = PrecisionPolicy(channels_last=True).resolve("cpu")
    assert policy.prepare_module(net) is net
    five_d = [p for p in net.parameters() if p.ndim == 5]
    assert five_d and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in five_d)
    assert not all(p.is_contiguous() for p in five_d)  # really re-laid out (C > 1)
    assert all(params_before[name] is p for name, p in net.named_parameters())  # optimizers stay valid
    assert all(torch.equal(state_before[k], v) for k, v in net.state_dict().items())

    x5 = torch.randn(2, 3, 4, 4, 4)
    assert policy.prepare_input(x5).is_contiguous(memory_format=torch.channels_last_3d)
    x4 = torch.randn(2, 3, 4, 4)
    assert policy.prepare_input(x4).is_contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(2, 3, 4)
    assert policy.prepare_input(x3) is x3 and policy.prepare_input(None) is None
    plain = PrecisionPolicy().resolve("cpu")
    assert plain.prepare_input(x5) is x5
    net2 = tiny_vnet()
    plain.prepare_module(net2)
    assert all(p.is_contiguous() for p in net2.parameters())


def test_one_channel_tensors_get_channels_last_strides():
    # contiguous(memory_format=...) keeps channels-first strides for C == 1 (both layouts at once);
    # oneDNN then runs a whole first stage channels-first: the policy sets the strides explicitly.
    policy = PrecisionPolicy(channels_last=True).resolve("cpu")
    x = torch.randn(2, 1, 4, 6, 8)
    assert x.contiguous(memory_format=torch.channels_last_3d).stride()[1] != 1
    x_cl = policy.prepare_input(x)
    assert x_cl.stride() == torch.empty(2, 1, 4, 6, 8, memory_format=torch.channels_last_3d).stride()
    assert torch.equal(x_cl, x) and policy.prepare_input(x_cl) is x_cl
    x4 = policy.prepare_input(torch.randn(2, 1, 6, 8))
    assert x4.stride() == torch.empty(2, 1, 6, 8, memory_format=torch.channels_last).stride()
    net = tiny_vnet()
    first = net.encoder_stages[0][0][0].weight
    before = first.detach().clone()
    policy.prepare_module(net)
    assert first.stride()[1] == 1 and torch.equal(first, before)
    y = net.encoder_stages[0](x_cl)  # the first stage's output is channels-last too
    assert y.is_contiguous(memory_format=torch.channels_last_3d) and not y.is_contiguous()


# ---------------------------------------------------------------- guard and fp32 islands
@needs_cpu_bf16
def test_guard_rewrites_only_small_first_axis_convs_with_weight_grad():
    conv = torch.nn.Conv3d(4, 4, 3, padding=1)
    flat, tiny, large = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 2, 2), torch.randn(1, 4, 8, 8, 8)
    thin_hw = torch.randn(1, 4, 4, 2, 2)  # small H/W with D >= kernel: measured exact, left alone
    with torch.autocast("cpu", dtype=torch.bfloat16), BF16ConvGuard() as guard:
        y_flat, y_tiny, y_large, y_thin = conv(flat), conv(tiny), conv(large), conv(thin_hw)
        with torch.no_grad():
            conv(tiny)  # forward-only: the bf16 forward kernel is exact
    assert (guard.swapped_calls, guard.fp32_calls, guard.guarded_calls) == (1, 1, 2)
    assert y_flat.dtype == torch.bfloat16 and y_tiny.dtype == torch.float32
    assert y_large.dtype == torch.bfloat16 and y_thin.dtype == torch.bfloat16
    ref_tiny = torch.nn.functional.conv3d(tiny, conv.weight, conv.bias, padding=1)
    assert torch.allclose(y_tiny, ref_tiny, atol=1e-5)
    ref_flat = torch.nn.functional.conv3d(flat, conv.weight, conv.bias, padding=1)
    assert y_flat.shape == ref_flat.shape
    assert (y_flat.float() - ref_flat).abs().max() <= 0.02 * ref_flat.abs().max()  # axis swap is exact up to bf16


@needs_cpu_bf16
@pytest.mark.parametrize("shape, tol", [((2, 4, 4), 0.02), ((2, 2, 2), 1e-4), ((2, 4, 6), 0.02)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_policy_autocast_gives_correct_small_conv_weight_gradients(shape, tol, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, *shape, generator=g).bfloat16().float()
    w0 = (0.1 * torch.randn(16, 16, 3, 3, 3, generator=g)).bfloat16().float()
    w_ref = w0.clone().requires_grad_(True)
    torch.nn.functional.conv3d(x, w_ref, padding=1).square().sum().backward()
    policy = PrecisionPolicy("bf16", channels_last=channels_last).resolve("cpu")
    x = policy.prepare_input(x)
    for _ in range(3):
        recycle_nan_memory()
        w = w0.clone().requires_grad_(True)
        with policy.autocast():
            y = torch.nn.functional.conv3d(x, w, padding=1)
        y.float().square().sum().backward()
        assert (w.grad - w_ref.grad).abs().max() <= tol * w_ref.grad.abs().max()


@needs_cpu_bf16
@pytest.mark.parametrize("channels_last", [False, True])
def test_guarded_conv_gradients_of_input_weight_and_bias_match_fp32(channels_last):
    # the swap path computes only the weight gradient with the axes swapped; input and bias
    # gradients and the output come from the unchanged bf16 kernels
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 8, 2, 4, 6, generator=g).bfloat16().float()
    w0 = (0.2 * torch.randn(12, 8, 3, 3, 3, generator=g)).bfloat16().float()
    b0 = torch.randn(12, generator=g).bfloat16().float()
    refs = [t.clone().requires_grad_(True) for t in (x0, w0, b0)]
    y_ref = torch.nn.functional.conv3d(*refs, padding=1)
    y_ref.square().sum().backward()
    policy = PrecisionPolicy("bf16", channels_last=channels_last).resolve("cpu")
    for _ in range(3):
        recycle_nan_memory()
        x, w, b = (t.clone().requires_grad_(True) for t in (policy.prepare_input(x0), w0, b0))
        with policy.autocast(), BF16ConvGuard() as guard:
            y = torch.nn.functional.conv3d(x, w, b, padding=1)
        assert guard.swapped_calls == 1 and y.dtype == torch.bfloat16 and y.shape == y_ref.shape
        assert (y.float() - y_ref).abs().max() <= 0.02 * y_ref.abs().max()
        y.float().square().sum().backward()
        for got, ref in zip((x, w, b), refs):
            assert got.grad.dtype == torch.float32 and bool(torch.isfinite(got.grad).all())
            assert (got.grad - ref.grad).abs().max() <= 0.03 * ref.grad.abs().max()


@needs_cpu_bf16
def test_losses_take_channels_last_bf16_logits_in_one_fp32_copy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 8, 8, 8, generator=g).bfloat16()
    target = torch.randint(0, C, (2, 1, 8, 8, 8), generator=g)
    weight = torch.tensor([0.2, 1.0, 3.0])
    cl = logits.contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    as32 = as_float32(cl)
    assert as32.dtype == torch.float32 and as32.is_contiguous() and torch.equal(as32, logits.float())
    plain = torch.randn(2, C, 4, 4, 4)
    assert as_float32(plain) is plain  # fp32 default path: no copy
    ref = logits.float().requires_grad_(True)
    DiceCELoss()(ref, target, weight).backward()
    DiceCELoss()(cl, target, weight).backward()
    assert cl.grad.dtype == torch.bfloat16 and torch.allclose(cl.grad.float(), ref.grad.bfloat16().float())


@needs_cpu_bf16
def test_losses_stay_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 8, 8, 8, generator=g)
    target = torch.randint(0, C, (2, 1, 8, 8, 8), generator=g)
    weight = torch.tensor([0.2, 1.0, 3.0])
    loss = DiceCELoss()
    expected = loss(logits.bfloat16().float(), target, weight)
    with PrecisionPolicy("bf16").resolve("cpu").autocast():
        value = loss(logits.bfloat16(), target, weight)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_float32_region_switches_autocast_off():
    policy = PrecisionPolicy("bf16").resolve("cpu")
    a = torch.randn(4, 4)
    with policy.autocast():
        lowered = a @ a
        with policy.float32():
            kept = a @ a
    assert kept.dtype == torch.float32
    assert lowered.dtype == (torch.bfloat16 if policy.autocast_enabled else torch.float32)


# ---------------------------------------------------------------- trainer
class RecordingSupervised(Supervised):
    """Records what the engine's forward sees: autocast state, layouts and dtypes."""

    def __init__(self, network):
        super().__init__(network)
        self.records = []

    def forward(self, image_l, label_l, image_u=None):
        logits = self.network(image_l)
        loss = self.loss(logits, label_l)
        self.records.append({
            "autocast": (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")),
            "image_cl": image_l.is_contiguous(memory_format=torch.channels_last_3d),
            "image_u_cl": image_u.is_contiguous(memory_format=torch.channels_last_3d),
            "weight_cl": multi_channel_weight(self.network).is_contiguous(memory_format=torch.channels_last_3d),
            "logits": logits.dtype,
            "loss": loss.dtype,
        })  # fmt: skip
        return super().forward(image_l, label_l, image_u)


def run_trainer(precision=None, seed=0, n=2, **kwargs):
    g = torch.Generator().manual_seed(seed)
    lab = [{"image": torch.randn(1, *SHAPE, generator=g), "label": torch.randint(0, C, (1, *SHAPE), generator=g)}
           for _ in range(n)]  # fmt: skip
    unl = [{"image": torch.randn(1, *SHAPE, generator=g)} for _ in range(n)]
    method = RecordingSupervised(tiny_vnet(seed))
    opt = torch.optim.SGD(method.parameters(), lr=0.01)
    trainer = SemiSupervisedTrainer(
        "cpu", 1, DataLoader(lab, batch_size=1), DataLoader(unl, batch_size=1), method, opt,
        decollate=False, precision=precision, **kwargs,
    )  # fmt: skip
    trainer.run()
    return trainer


@needs_cpu_bf16
def test_trainer_forward_runs_under_the_policy():
    trainer = run_trainer(PrecisionPolicy("bf16", channels_last=True))
    assert trainer.precision.precision == "bf16" and trainer.amp and not trainer.scaler.is_enabled()
    rec = trainer.method.records
    assert len(rec) == 2
    for r in rec:
        assert r["autocast"] == (True, torch.bfloat16)
        assert r["image_cl"] and r["image_u_cl"] and r["weight_cl"]
        assert r["logits"] == torch.bfloat16 and r["loss"] == torch.float32
    assert torch.isfinite(trainer.state.output["loss"]) and trainer.state.output["pred"].dtype == torch.float32


def test_trainer_fp32_policy_and_legacy_amp_mapping(caplog):
    trainer = run_trainer("fp32")
    assert [r["autocast"][0] for r in trainer.method.records] == [False, False]
    assert not any(r["weight_cl"] for r in trainer.method.records)  # (1-channel images are layout-ambiguous)
    with caplog.at_level(logging.WARNING, logger="scdl_monai.engines.precision"):
        legacy = run_trainer(None, n=1, amp=True, amp_dtype="float16")
    # amp_dtype keeps the request; the effective policy falls back on CPU, with a logged reason
    assert legacy.amp_dtype == torch.float16 and legacy.precision.precision == "fp32"
    assert legacy.method.records[0]["autocast"][0] is False and "fp16 requested" in caplog.text


@needs_cpu_bf16
@pytest.mark.parametrize("seed", [0, 3])
def test_trainer_bf16_tiny_vnet_has_finite_gradients_with_mkldnn_on(seed):
    """The configuration that gave NaN (16^3 VNet, 2^3 decoder stage) trains with the guard."""
    assert torch.backends.mkldnn.enabled
    g = torch.Generator().manual_seed(seed)
    lab = [{"image": torch.randn(1, *SHAPE, generator=g), "label": torch.randint(0, C, (1, *SHAPE), generator=g)}]
    method = Supervised(tiny_vnet(seed))
    opt = torch.optim.SGD(method.parameters(), lr=0.01)
    lab_loader = DataLoader(lab, batch_size=1)
    trainer = SemiSupervisedTrainer("cpu", 3, lab_loader, None, method, opt, amp=True, decollate=False)
    losses = []

    @trainer.on(Events.ITERATION_STARTED)
    def _pollute(_):
        recycle_nan_memory()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _check(engine):
        losses.append(float(engine.state.output["loss"]))
        assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)

    trainer.run()
    assert trainer.precision.conv_guard and len(losses) == 3
    assert all(torch.isfinite(torch.tensor(losses)))


# ---------------------------------------------------------------- inference
def test_policy_inferer_fp32_equals_monai_default():
    net = tiny_vnet(norm="batch").eval()
    x = torch.randn(1, 1, 24, 20, 28)
    ref = SlidingWindowInferer(SHAPE, sw_batch_size=1, overlap=0.25)(x, net)
    ours = PolicyInferer(SHAPE, precision="fp32", sw_batch_size=3, overlap=0.25)(x, net)
    assert ours.shape == (1, C, 24, 20, 28) and ours.dtype == torch.float32
    assert torch.allclose(ours, ref, atol=1e-5)


@needs_cpu_bf16
def test_policy_inferer_bf16_channels_last_matches_fp32_argmax():
    net = tiny_vnet(norm="batch").eval()
    x = torch.randn(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(1))
    ref = SlidingWindowInferer(SHAPE, sw_batch_size=1, overlap=0.25)(x, net)
    inferer = PolicyInferer(SHAPE, precision="bf16", channels_last=True, sw_batch_size=2, overlap=0.25)
    with torch.no_grad():  # as inside MONAI's evaluators: resolution (with its probes) must work here
        ours = inferer(x, net)
    assert inferer.policy_for("cpu").precision == "bf16"
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    assert multi_channel_weight(net).is_contiguous(memory_format=torch.channels_last_3d)
    scale = ref.abs().max()
    assert (ours - ref).abs().max() <= 0.05 * scale  # bf16 keeps 8 significant bits
    agreement = (ours.argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement >= 0.97


def test_policy_inferer_falls_back_and_validates(caplog):
    with caplog.at_level(logging.WARNING, logger="scdl_monai.engines.precision"):
        inferer = PolicyInferer(SHAPE, precision="fp16")
        out = inferer(torch.randn(1, 1, 16, 16, 16), tiny_vnet(norm="batch").eval())
    assert out.dtype == torch.float32 and inferer.policy_for("cpu").precision == "fp32"
    assert "fp16 requested on 'cpu'" in caplog.text
    with pytest.raises(ValueError, match="sw_batch_size must be a positive integer, got 0"):
        PolicyInferer(SHAPE, sw_batch_size=0)
    with pytest.raises(TypeError, match="precision must be a PrecisionPolicy"):
        PolicyInferer(SHAPE, precision=3)


# ---------------------------------------------------------------- benchmark smoke
def test_quick_benchmark_smoke(tmp_path):
    out = tmp_path / "fastpath.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "fastpath.py"), "--quick", "--iters", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=str(REPO_ROOT),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["train"]) == {"fp32", "fast"} and res["quick"]
    assert res["train"]["fp32"]["ratio_to_fp32"] == 1.0
    assert all(row["finite_grads"] and row["times_s"] for row in res["train"].values())
    assert res["inference"]["monai_fp32"]["voxels_per_s"] > 0 and res["inference_argmax_agreement"] > 0.9
    assert res["machine"]["torch"] == torch.__version__
    amx = "amx_bf16" in res["machine"]["isa"]
    assert res["acceptance"]["train_fast_ratio_target"] == (0.30 if amx else 0.33)
    assert res["machine_label"].startswith(res["machine"]["cpu"]) and res["machine_label"] in proc.stdout
    assert "| fast |" in out.with_suffix(".md").read_text() and "| fast |" in proc.stdout
    bad = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "fastpath.py"), "--configs", "fp64"],
        capture_output=True, text=True, timeout=120, cwd=str(REPO_ROOT),
    )  # fmt: skip
    assert bad.returncode != 0 and "--configs: unknown ['fp64']" in bad.stderr


def test_exact_overlap_gives_the_intended_monai_stride():
    from monai.inferers.utils import _get_scan_interval

    from scdl_monai.engines.policy_inferer import exact_overlap

    # plain floats: 96 * (1 - 5/6) = 15.999999999999996, which MONAI truncates to 15
    assert _get_scan_interval((200, 200, 200), (96, 96, 96), 3, (5 / 6,) * 3) == (15, 15, 15)
    snapped = exact_overlap((96, 96, 96), (2 / 3, 2 / 3, 5 / 6))
    assert _get_scan_interval((200, 200, 200), (96, 96, 96), 3, snapped) == (32, 32, 16)
    # values that are not a whole stride keep MONAI's meaning (truncation); 0 stays 0
    assert exact_overlap((15, 15, 15), 0.5) == 0.5
    assert exact_overlap((96, 96, 96), [0.0, 0.25, 0.7]) == [0.0, 0.25, 0.7]
    inferer = PolicyInferer((96, 96, 96), overlap=[2 / 3, 2 / 3, 5 / 6])
    assert inferer.scan_interval == (32, 32, 16) and inferer.requested_overlap == [2 / 3, 2 / 3, 5 / 6]


def test_fusion_option_is_validated_naming_the_config_key():
    with pytest.raises(ValueError, match="sw_fusion"):
        PolicyInferer(SHAPE, fusion="mean")
    net = VNet(out_channels=3, n_filters=4).eval()
    x = torch.randn(1, 1, *SHAPE)
    probs = PolicyInferer(SHAPE, fusion="probabilities")(x, net)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, *SHAPE), atol=1e-5)
    with pytest.raises(TypeError, match="one tensor of logits"):
        PolicyInferer(SHAPE, fusion="probabilities")(x, lambda w: (net(w), net(w)))
