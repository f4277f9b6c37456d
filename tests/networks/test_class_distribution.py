"""Tests for scdl_monai.networks.class_distribution (the SCDL block; paper arXiv 2603.05202 §2.1)."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from scdl_monai.networks.class_distribution import (
    SCDL,
    SCDLOutput,
    TokenExtractor,
    token_weights_from_assignment,
    token_weights_from_labels,
    token_weights_from_pseudo_label,
)
from scdl_monai.networks.vnet import VNet


def small_scdl(**kwargs) -> SCDL:
    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "x_dim": 4, "z_dim": 8, "num_proxy_samples": 5, **kwargs}
    return SCDL(**kwargs)


def test_reference_defaults_and_parameter_shapes():
    scdl = SCDL(num_classes=14)
    assert (scdl.x_dim, scdl.z_dim, scdl.num_proxy_samples, scdl.num_token_samples) == (16, 256, 50, 2)
    assert (scdl.tau_e2p, scdl.tau_p2e, scdl.tau_dist) == (0.2, 0.2, 0.2)
    assert scdl.proxies.shape == (14, 512)
    torch.testing.assert_close(scdl.sigma_emb.detach(), torch.full((256,), 0.05))
    linears = [m for m in scdl.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 512), (512, 512), (512, 256)]
    assert [m.p for m in scdl.projector if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    # Xavier-uniform on [C, 2D]: |entries| <= sqrt(6 / (C + 2D))
    assert scdl.proxies.abs().max() <= math.sqrt(6 / (14 + 512))
    assert len(scdl.injection_projections) == 0


def test_forward_shapes_of_every_output():
    scdl = small_scdl().train()
    out = scdl(torch.randn(2, 4, 2, 3, 4))
    assert isinstance(out, SCDLOutput)
    b, l, c, d = 2, 24, 3, 8
    expected = {
        "z": (b, l, d),
        "z_normalized": (b, l, d),
        "assignment": (b, l, c),
        "similarity": (b, l, c),
        "probs": (b, l, c),
        "probs_p2e": (b, l, c),
        "mu": (c, d),
        "sigma": (c, d),
        "prior": (b, 3 * d, 2, 3, 4),
    }
    assert {k: tuple(v.shape) for k, v in out._asdict().items()} == expected
    assert all(isinstance(v, torch.Tensor) for v in out)
    torch.testing.assert_close(out.z_normalized.norm(dim=-1), torch.ones(b, l))
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(b, l))
    assert out.assignment.abs().max() <= 1 + 1e-6


def test_prior_layout_follows_token_order():
    scdl = small_scdl().eval()
    tokens = torch.randn(1, 4, 2, 2, 3)
    out = scdl(tokens)
    # token (i, j, k) of the grid is row i*6 + j*3 + k of the (B, L, .) tensors
    token = tokens[0, :, 1, 0, 2]
    z = scdl.projector(token[None])[0]
    torch.testing.assert_close(out.z[0, 1 * 6 + 0 * 3 + 2], z)
    # eval: the z_sam third of the prior is the normalised embedding
    torch.testing.assert_close(out.prior[0, 16:, 1, 0, 2], F.normalize(z, dim=0))


def test_sigma_is_softplus_of_raw_and_positive():
    scdl = small_scdl()
    with torch.no_grad():
        scdl.proxies[:, 8:] = -30.0  # raw sigma very negative
        scdl.proxies[0, 8:] = 2.0
    mu, sigma = scdl.proxy_parameters()
    assert (sigma > 0).all()
    torch.testing.assert_close(sigma, F.softplus(scdl.proxies[:, 8:]))
    torch.testing.assert_close(sigma[0], torch.full((8,), math.log1p(math.exp(2.0))))
    torch.testing.assert_close(mu, scdl.proxies[:, :8])
    samples = scdl.sample_proxies(7)
    assert samples.shape == (3, 7, 8)
    torch.testing.assert_close(samples.norm(dim=-1), torch.ones(3, 7))
    # with σ ≈ 0 every sample of class 1 is μ̂_1
    torch.testing.assert_close(samples[1], F.normalize(mu[1], dim=0).expand(7, 8))


def test_eval_is_deterministic_and_train_samples():
    scdl = small_scdl(dropout=0.0)  # no dropout: z identical across calls, only sampling differs
    tokens = torch.randn(2, 4, 2, 2, 2)
    scdl.eval()
    a, b = scdl(tokens), scdl(tokens)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(a.prior[:, 16:].flatten(2).transpose(1, 2), a.z_normalized)  # z_sam = ẑ
    torch.testing.assert_close(a.assignment, a.similarity)  # eval_proxy_samples="mean"

    scdl.train()
    c, d = scdl(tokens), scdl(tokens)
    torch.testing.assert_close(c.z, d.z, rtol=0, atol=0)
    torch.testing.assert_close(c.similarity, d.similarity, rtol=0, atol=0)
    assert not torch.allclose(c.prior[:, 16:], d.prior[:, 16:])  # token-sampling noise
    assert not torch.allclose(c.assignment, d.assignment)  # fresh proxy samples
    z_sam = c.prior[:, 16:].flatten(2).transpose(1, 2)
    torch.testing.assert_close(z_sam.norm(dim=-1), torch.ones(2, 8))


def test_assignment_is_mean_cosine_to_proxy_samples():
    scdl = small_scdl(dropout=0.0).train()
    tokens = torch.randn(2, 4, 2, 2, 1)
    torch.manual_seed(123)
    out = scdl(tokens)  # the proxy samples are the first random draw of forward
    torch.manual_seed(123)
    samples = scdl.sample_proxies()  # (C, S, D), unit norm
    explicit = torch.einsum("bld,csd->blcs", out.z_normalized, samples).mean(-1)  # the reference's (B,L,C,S)
    torch.testing.assert_close(out.assignment, explicit)


def test_eval_proxy_samples_sample_mode_is_stochastic():
    scdl = small_scdl(eval_proxy_samples="sample").eval()
    tokens = torch.randn(1, 4, 2, 2, 2)
    assert not torch.allclose(scdl(tokens).assignment, scdl(tokens).assignment)


def _identity_scdl(mu, log_sigma=-30.0, **kwargs) -> SCDL:
    """SCDL with x_dim = z_dim = 2 whose projector is the identity on non-negative inputs."""
    scdl = SCDL(num_classes=mu.shape[0], x_dim=2, z_dim=2, dropout=0.0, **kwargs).eval()
    lin1, lin2, lin3 = (m for m in scdl.projector if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        for lin in (lin1, lin2, lin3):
            lin.bias.zero_()
        lin1.weight.copy_(torch.eye(4, 2))
        lin2.weight.copy_(torch.eye(4))
        lin3.weight.copy_(torch.eye(2, 4))
        scdl.proxies[:, :2] = mu
        scdl.proxies[:, 2:] = log_sigma
    return scdl


def test_priors_hand_computed():
    mu = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    scdl = _identity_scdl(mu, tau_p2e=0.5, tau_dist=1.0)
    tokens = torch.tensor([3.0, 0.0]).view(1, 2, 1, 1, 1)  # one token pointing along class 0
    out = scdl(tokens)
    torch.testing.assert_close(out.z, torch.tensor([[[3.0, 0.0]]]))
    torch.testing.assert_close(out.similarity, torch.tensor([[[1.0, 0.0]]]))
    p0 = math.exp(5) / (math.exp(5) + 1)  # softmax((1, 0) / 0.2)
    torch.testing.assert_close(out.probs, torch.tensor([[[p0, 1 - p0]]]))
    q0 = math.exp(2) / (math.exp(2) + 1)  # softmax((1, 0) / 0.5): tau_p2e weights the center prior
    torch.testing.assert_close(out.probs_p2e, torch.tensor([[[q0, 1 - q0]]]))
    prior = out.prior.flatten()
    e0 = math.e / (math.e + 1)  # tau_dist = 1: paper Eq. 5, weights softmax((1, 0)) on raw μ
    torch.testing.assert_close(prior[:2], torch.tensor([2.0 * e0, 1 - e0]))
    r_center = torch.tensor([q0, 1 - q0]) / math.hypot(q0, 1 - q0)  # normalize(Σ P·μ̂)
    torch.testing.assert_close(prior[2:4], r_center)
    torch.testing.assert_close(prior[4:], torch.tensor([1.0, 0.0]))  # z_sam = ẑ in eval


def test_token_weights_from_labels_exact_area_fractions():
    label = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    label[..., 0:2, 0:2, 0:1] = 1  # 4 of the 8 voxels of cell (0,0,0)
    label[..., 2:4, 2:4, 2:4] = 2  # all of cell (1,1,1)
    label[..., 0, 2, 2] = 2  # 1 voxel of cell (0,1,1)
    label[..., 0, 3, 3] = 1  # 1 voxel of cell (0,1,1)
    w = token_weights_from_labels(label, 3, (2, 2, 2))
    expected = torch.zeros(1, 8, 3)
    expected[..., 0] = 1.0
    expected[0, 0] = torch.tensor([0.5, 0.5, 0.0])  # cell (0,0,0)
    expected[0, 3] = torch.tensor([6 / 8, 1 / 8, 1 / 8])  # cell (0,1,1) = row 0*4 + 1*2 + 1
    expected[0, 7] = torch.tensor([0.0, 0.0, 1.0])  # cell (1,1,1)
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-7)
    # float labels holding integers (MONAI loaders) and MetaTensors give the same weights
    torch.testing.assert_close(token_weights_from_labels(MetaTensor(label.float()), 3, (2, 2, 2)), w)
    # 2-D and non-cubic grids
    lab2 = torch.tensor([[[[0, 1, 1, 1], [0, 0, 2, 2]]]])
    torch.testing.assert_close(
        token_weights_from_labels(lab2, 3, (1, 2)), torch.tensor([[[0.75, 0.25, 0.0], [0.0, 0.5, 0.5]]])
    )


def test_token_weights_errors():
    lab = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="integer"):
        token_weights_from_labels(lab.bool(), 2, (2, 2, 2))
    with pytest.raises(ValueError, match="fractional"):
        token_weights_from_labels(lab + 0.5, 2, (2, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        token_weights_from_labels(lab + 2, 2, (2, 2, 2))
    with pytest.raises(ValueError, match="token_shape"):
        token_weights_from_labels(lab, 2, (2, 2))
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        token_weights_from_labels(lab[:, 0], 2, (2, 2))


def test_pseudo_label_weights_are_argmax_proportions():
    logits = torch.zeros(1, 2, 2, 4, requires_grad=True)
    with torch.no_grad():
        logits[0, 1, :, :1] = 1.0  # class 1 wins in column 0
    w = token_weights_from_pseudo_label(logits, (1, 2))
    torch.testing.assert_close(w, torch.tensor([[[0.5, 0.5], [1.0, 0.0]]]))
    assert not w.requires_grad


def test_sharpened_weights_sum_to_one_without_gradient():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])).requires_grad_()
    probs = torch.softmax(logits, dim=-1)
    w = token_weights_from_assignment(probs)
    assert not w.requires_grad and w.grad_fn is None
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    torch.testing.assert_close(w[0], torch.tensor([0.25, 0.09, 0.04]) / 0.38)
    other = torch.tensor([[1.0, 1.0, 0.0], [0.2, 0.2, 0.6]])
    torch.testing.assert_close(token_weights_from_assignment(probs, other)[0], torch.tensor([0.5, 0.3, 0.0]) / 0.8)
    with pytest.raises(ValueError, match="same shape"):
        token_weights_from_assignment(probs, other[:1])


def test_project_prior_shapes_and_commutation():
    scdl = small_scdl(injection_channels=(6, 5, 3))
    out = scdl.train()(torch.randn(2, 4, 2, 2, 2))
    targets = [(2, 2, 2), (4, 4, 4), torch.zeros(1, 1, 8, 6, 4)]
    inject = scdl.project_prior(out.prior, targets)
    assert [tuple(t.shape) for t in inject] == [(2, 6, 2, 2, 2), (2, 5, 4, 4, 4), (2, 3, 8, 6, 4)]
    assert all(p.bias is None for p in scdl.injection_projections)
    torch.testing.assert_close(inject[0], scdl.injection_projections[0](out.prior))  # same size: no resize
    # bias-free 1x1 conv and trilinear resize commute
    up_first = scdl.injection_projections[1](F.interpolate(out.prior, size=(4, 4, 4), mode="trilinear"))
    torch.testing.assert_close(inject[1], up_first, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 entries"):
        scdl.project_prior(out.prior, targets[:2])
    with pytest.raises(ValueError, match="channels"):
        scdl.project_prior(out.prior[:, :5], targets)
    with pytest.raises(ValueError, match="injection_channels=None"):
        small_scdl().project_prior(out.prior, targets)


def test_proxy_sigma_init_sets_sigma_and_keeps_mu():
    torch.manual_seed(0)
    reference = SCDL(num_classes=3, x_dim=4, z_dim=8)
    torch.manual_seed(0)
    narrow = SCDL(num_classes=3, x_dim=4, z_dim=8, proxy_sigma_init=0.05)
    mu_ref, sigma_ref = reference.proxy_parameters()
    mu, sigma = narrow.proxy_parameters()
    torch.testing.assert_close(mu, mu_ref)  # μ drawn as the released initialisation draws it
    torch.testing.assert_close(sigma, torch.full((3, 8), 0.05))
    # the released initialisation: σ = softplus(U(-b, b)) with b = sqrt(6 / (C + 2D)), i.e. ≈ 0.69
    bound = math.sqrt(6.0 / (3 + 16))
    assert F.softplus(torch.tensor(-bound)) <= sigma_ref.min() <= sigma_ref.max() <= F.softplus(torch.tensor(bound))
    with pytest.raises(ValueError, match="proxy_sigma_init"):
        SCDL(num_classes=3, proxy_sigma_init=0.0)


def test_constructor_and_forward_errors():
    with pytest.raises(ValueError, match="num_classes"):
        SCDL(num_classes=0)
    with pytest.raises(ValueError, match="tau_dist"):
        SCDL(num_classes=3, tau_dist=0.0)
    with pytest.raises(ValueError, match="dropout"):
        SCDL(num_classes=3, dropout=1.0)
    with pytest.raises(ValueError, match="injection_channels"):
        SCDL(num_classes=3, injection_channels=(8, 0))
    with pytest.raises(ValueError, match="eval_proxy_samples"):
        SCDL(num_classes=3, eval_proxy_samples="median")
    scdl = small_scdl()
    with pytest.raises(ValueError, match="x_dim=4"):
        scdl(torch.randn(1, 5, 2, 2, 2))
    with pytest.raises(ValueError, match="3 grid dims"):
        scdl(torch.randn(1, 4, 2, 2))


def test_token_extractor_sources():
    torch.manual_seed(0)
    enc = TokenExtractor("encoder", in_channels=6, x_dim=4)
    feat = torch.randn(2, 6, 3, 3, 3)
    assert enc(feat).shape == (2, 4, 3, 3, 3)
    assert enc.proj.kernel_size == (1, 1, 1)

    dec = TokenExtractor("decoder_final", in_channels=4, x_dim=4)
    assert dec.pool_factor == 8 and sum(p.numel() for p in dec.parameters()) == 0
    x = torch.arange(16 * 16 * 8, dtype=torch.float32).view(1, 1, 16, 16, 8).expand(1, 4, 16, 16, 8)
    tokens = dec(x)
    assert tokens.shape == (1, 4, 2, 2, 1)
    torch.testing.assert_close(tokens[0, 0, 1, 0, 0], x[0, 0, 8:, :8, :].mean())  # exact block mean
    assert TokenExtractor("decoder_final", in_channels=8, x_dim=4).proj.out_channels == 4
    with pytest.raises(ValueError, match="source"):
        TokenExtractor("decoder", in_channels=4)
    with pytest.raises(ValueError, match="channels"):
        enc(torch.randn(1, 5, 3, 3, 3))
    with pytest.raises(ValueError, match="pool_factor"):
        dec(torch.randn(1, 4, 4, 4, 4))


def test_injection_into_vnet_all_stages():
    torch.manual_seed(0)
    net = VNet(spatial_dims=3, in_channels=1, out_channels=3, n_filters=4).train()
    extractor = TokenExtractor("encoder", in_channels=net.feature_channels[3], x_dim=4)
    scdl = SCDL(
        num_classes=3, x_dim=4, z_dim=8, num_proxy_samples=4, injection_channels=net.decoder_channels, zero_init_injection=False
    )
    x = torch.randn(2, 1, 32, 32, 16)
    features = net.encode(x)
    out = scdl(extractor(features[3]))  # x4 is at 1/8: token grid 4x4x2
    assert out.prior.shape == (2, 24, 4, 4, 2)
    stage_shapes = [tuple(s // f for s in x.shape[2:]) for f in net.decoder_scales]
    inject = scdl.project_prior(out.prior, stage_shapes)
    assert [tuple(t.shape) for t in inject] == [(2, c, *s) for c, s in zip(net.decoder_channels, stage_shapes)]
    logits, last = net.decode(features, injection=inject)
    assert logits.shape == (2, 3, 32, 32, 16) and last.shape == (2, 4, 32, 32, 16)
    logits.square().mean().backward()
    assert scdl.proxies.grad is not None and scdl.proxies.grad[:, :8].abs().sum() > 0  # via r_dist, r_center
    assert all(p.weight.grad.abs().sum() > 0 for p in scdl.injection_projections)
    assert extractor.proj.weight.grad.abs().sum() > 0
    # the injection changes the decoder output
    with torch.no_grad():
        net.eval()
        scdl.eval()
        feats = net.encode(x)
        plain, _ = net.decode(feats)
        inj = scdl.project_prior(scdl(extractor(feats[3])).prior, stage_shapes)
        assert not torch.allclose(net.decode(feats, injection=inj)[0], plain)


def test_class_statistics_stay_float32_under_bf16_autocast():
    scdl = SCDL(num_classes=3, x_dim=4, z_dim=8, num_proxy_samples=3)
    tokens = torch.randn(2, 4, 2, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scdl(tokens)
    assert out.z.dtype == torch.float32  # the projector ran in bf16; cast back before the statistics
    for name in ("z_normalized", "assignment", "similarity", "probs", "probs_p2e", "prior"):
        assert getattr(out, name).dtype == torch.float32, name
    assert torch.allclose(out.probs.sum(-1), torch.ones(()), atol=1e-6)


def _identity_projector(block):
    """Tokens are their own embeddings (x_dim == z_dim), to place a token exactly at a class mean."""
    block.projector = torch.nn.Sequential(torch.nn.Identity())
    return block


def test_a_token_at_its_class_mean_gets_the_same_prior_in_training_and_evaluation():
    torch.manual_seed(0)
    d, c = 16, 6
    block = _identity_projector(SCDL(num_classes=c, x_dim=d, z_dim=d, num_proxy_samples=50))
    mu, _ = block.proxy_parameters()
    tokens = mu.detach().t().reshape(1, d, c, 1, 1)  # token k sits at the mean of class k
    block.train()
    torch.manual_seed(1)
    train = block(tokens).prior[:, : 2 * d]  # r_dist and r_center (z_sam carries token noise in training)
    block.eval()
    evaluated = block(tokens).prior[:, : 2 * d]
    assert torch.allclose(train, evaluated, atol=1e-6)
    # and it is the proxy-mean weighting: own class dominant, not the near-uniform sampled cosines
    mu_hat = F.normalize(mu.detach(), dim=-1)
    weights = torch.softmax(mu_hat @ mu_hat.t() / 0.2, dim=-1)
    assert weights.diagonal().min() > 0.5
    r_dist = (weights @ mu.detach()).t().reshape(1, d, c, 1, 1)
    assert torch.allclose(evaluated[:, :d], r_dist, atol=1e-6)
    # the sampled assignment of the losses still uses proxy samples in training
    block.train()
    assert not torch.allclose(block(tokens).assignment, block.eval()(tokens).assignment)


def test_injection_projections_start_at_zero_unless_asked():
    block = SCDL(num_classes=3, x_dim=4, z_dim=8, injection_channels=(8, 4))
    assert all(torch.count_nonzero(p.weight) == 0 for p in block.injection_projections)
    prior = block(torch.randn(1, 4, 2, 2, 2)).prior
    assert all(torch.count_nonzero(t) == 0 for t in block.project_prior(prior, [(4, 4, 4), (8, 8, 8)]))
    block = SCDL(num_classes=3, x_dim=4, z_dim=8, injection_channels=(8, 4), zero_init_injection=False)
    assert all(torch.count_nonzero(p.weight) > 0 for p in block.injection_projections)
    with pytest.raises(ValueError, match="zero_init_injection"):
        SCDL(num_classes=3, zero_init_injection="yes")


def test_a_deterministic_call_in_training_mode_equals_evaluation():
    torch.manual_seed(0)
    block = SCDL(num_classes=3, x_dim=4, z_dim=8, num_proxy_samples=5).train()
    tokens = torch.randn(2, 4, 2, 2, 2)
    det = block(tokens, stochastic=False)
    ref = block.eval()(tokens)
    for a, b in zip(det, ref):
        assert torch.equal(a, b)
    block.train()
    assert not torch.equal(block(tokens).prior, block(tokens).prior)


def test_confident_pseudo_label_weights_and_mask():
    from scdl_monai.networks.class_distribution import token_weights_from_confident_pseudo_label, token_weights_from_pseudo_label

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8) * 3
    w0, m0 = token_weights_from_confident_pseudo_label(logits, (2, 2, 2), threshold=0.0)
    assert m0.all() and torch.allclose(w0, token_weights_from_pseudo_label(logits, (2, 2, 2)))
    w, m = token_weights_from_confident_pseudo_label(logits, (2, 2, 2), threshold=0.99)
    assert torch.allclose(w[m].sum(-1), torch.ones(int(m.sum())))
    confident = torch.softmax(logits, 1).max(1).values >= 0.99
    per_token = F.adaptive_avg_pool3d(confident.float()[:, None], (2, 2, 2)).flatten(1)
    assert torch.equal(m, per_token > 0)
    with pytest.raises(ValueError, match="threshold"):
        token_weights_from_confident_pseudo_label(logits, (2, 2, 2), threshold=1.5)
