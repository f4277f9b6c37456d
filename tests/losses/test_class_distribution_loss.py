"""Tests for scdl_monai.losses.class_distribution_loss (CDBA and SAC losses; paper arXiv 2603.05202 Eqs. 3, 4, 8, 9)."""

import math

import pytest
import torch
import torch.nn.functional as F

from scdl_monai.losses.class_distribution_loss import (
    E2PLoss,
    P2ELoss,
    ProxyLoss,
    SACLoss,
    sac_anchors_feature_pool,
    sac_anchors_masked_image,
)
from scdl_monai.networks.class_distribution import SCDL, TokenExtractor, token_weights_from_assignment, token_weights_from_labels
from scdl_monai.networks.vnet import VNet

# Two tokens, two classes: token 0 is class 0, token 1 is class 1.
A = torch.tensor([[0.5, -0.5], [0.2, 0.8]])
W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
# (2w - 1)·ā = [[0.5, 0.5], [-0.2, 0.8]]


def test_p2e_code_form_hand_computed():
    expected_per_class = [(math.exp(-0.5) + math.exp(0.2)) / 2, (math.exp(-0.5) + math.exp(-0.8)) / 2]
    torch.testing.assert_close(P2ELoss(reduction="none")(A, W), torch.tensor(expected_per_class))
    torch.testing.assert_close(P2ELoss()(A, W), torch.tensor(sum(expected_per_class) / 2))
    assert P2ELoss().form == "code"


def test_p2e_paper_form_hand_computed():
    # Eq. 4: the expectation over tokens sits inside the exponential
    expected_per_class = [math.exp(-(0.5 - 0.2) / 2), math.exp(-(0.5 + 0.8) / 2)]
    torch.testing.assert_close(P2ELoss("paper", reduction="none")(A, W), torch.tensor(expected_per_class))
    torch.testing.assert_close(P2ELoss("paper")(A, W), torch.tensor(sum(expected_per_class) / 2))
    # Jensen: the code form (mean of exp) is never below the paper form (exp of mean)
    assert P2ELoss("code")(A, W) >= P2ELoss("paper")(A, W)


def test_p2e_reduces_to_one_at_zero_similarity_and_keeps_leading_dims():
    a = torch.zeros(2, 5, 3)
    w = torch.rand(2, 5, 3)
    for form in ("code", "paper"):
        torch.testing.assert_close(P2ELoss(form)(a, w), torch.tensor(1.0))
    # (B, L, C) input equals the flattened (B*L, C) input
    a, w = torch.randn(2, 5, 3), torch.rand(2, 5, 3)
    torch.testing.assert_close(P2ELoss()(a, w), P2ELoss()(a.reshape(10, 3), w.reshape(10, 3)))


def test_e2p_code_and_paper_forms_hand_computed():
    # code: mean_t Σ_c w·(1 - ā) = ((1 - 0.5) + (1 - 0.8)) / 2
    torch.testing.assert_close(E2PLoss()(A, W), torch.tensor(0.35))
    torch.testing.assert_close(E2PLoss(reduction="none")(A, W), torch.tensor([0.5, 0.2]))
    torch.testing.assert_close(E2PLoss(reduction="sum")(A, W), torch.tensor(0.7))
    # paper (Eq. 3): Σ_c P(c|t)·(1 - cos(ẑ_t, μ̂_c)) on the proxy means
    sim = torch.tensor([[1.0, 0.0], [0.0, 0.5]])
    probs = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    # token 0: 0.75·0 + 0.25·1 = 0.25; token 1: 0.5·1 + 0.5·0.5 = 0.75
    torch.testing.assert_close(E2PLoss("paper")(similarity=sim, probs=probs), torch.tensor(0.5))
    # the paper form ignores ā and w
    torch.testing.assert_close(E2PLoss("paper")(A, W, sim, probs), torch.tensor(0.5))
    with pytest.raises(ValueError, match="missing"):
        E2PLoss("paper")(A, W)
    with pytest.raises(ValueError, match="missing"):
        E2PLoss()(similarity=sim, probs=probs)


def test_proxy_loss_combines_terms():
    total = ProxyLoss()(A, W)
    torch.testing.assert_close(total, P2ELoss()(A, W) + 0.1 * E2PLoss()(A, W))
    p2e, e2p = ProxyLoss(e2p_weight=0.5).terms(A, W)
    torch.testing.assert_close(ProxyLoss(e2p_weight=0.5)(A, W), p2e + 0.5 * e2p)
    sim, probs = torch.tensor([[1.0, 0.0], [0.0, 0.5]]), torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    paper = ProxyLoss(p2e_form="paper", e2p_form="paper")(A, W, sim, probs)
    torch.testing.assert_close(paper, P2ELoss("paper")(A, W) + 0.1 * torch.tensor(0.5))


def test_loss_errors():
    with pytest.raises(ValueError, match="form"):
        P2ELoss("papers")
    with pytest.raises(ValueError, match="reduction"):
        E2PLoss(reduction="avg")
    with pytest.raises(ValueError, match="e2p_weight"):
        ProxyLoss(e2p_weight=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        P2ELoss()(A, W[:1])
    with pytest.raises(TypeError, match="weights"):
        P2ELoss()(A, [[1.0, 0.0]])


def test_proxy_gradients_flow_from_losses_into_mu_and_sigma():
    torch.manual_seed(0)
    scdl = SCDL(num_classes=3, x_dim=4, z_dim=8, num_proxy_samples=6).train()
    tokens = torch.randn(2, 4, 2, 2, 2, requires_grad=True)
    out = scdl(tokens)
    label = torch.randint(0, 3, (1, 1, 4, 4, 4))
    w_lab = token_weights_from_labels(label, 3, (2, 2, 2))
    w_unl = token_weights_from_assignment(out.probs[1:])
    weights = torch.cat([w_lab, w_unl])
    loss = ProxyLoss()(out.assignment, weights)
    loss.backward()
    grad = scdl.proxies.grad
    assert grad[:, :8].abs().sum() > 0  # μ
    assert grad[:, 8:].abs().sum() > 0  # σ, through the proxy samples
    assert tokens.grad.abs().sum() > 0  # embeddings are aligned too
    # paper-form E2P works on the proxy means: no gradient into σ from it alone
    scdl.zero_grad()
    out = scdl(tokens)
    E2PLoss("paper")(similarity=out.similarity, probs=out.probs).backward()
    assert scdl.proxies.grad[:, :8].abs().sum() > 0
    assert scdl.proxies.grad[:, 8:].abs().sum() == 0


def test_sac_zero_at_anchors_and_gradient_only_into_mu():
    mu = torch.randn(4, 6, requires_grad=True)
    anchors = (3.0 * mu.detach()).requires_grad_()  # cosine is scale invariant
    loss = SACLoss()(mu, anchors)
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)

    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    anchors = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]], requires_grad=True)
    present = torch.tensor([True, True, False])
    loss = SACLoss()(mu, anchors, present)
    torch.testing.assert_close(loss, torch.tensor(0.5))  # (1 - 0 + 1 - 1) / 2, class 2 ignored
    loss.backward()
    assert anchors.grad is None  # anchors are detached
    assert mu.grad[0].abs().sum() > 0 and mu.grad[2].abs().sum() == 0
    per_class = SACLoss(reduction="none")(mu, anchors, present)
    torch.testing.assert_close(per_class, torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_sac_no_present_class_is_zero_and_backpropagates():
    mu = torch.randn(3, 4, requires_grad=True)
    loss = SACLoss()(mu, torch.zeros(3, 4), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(mu.grad, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="present"):
        SACLoss()(mu, torch.zeros(3, 4), torch.ones(2, dtype=torch.bool))


def test_feature_pool_anchors_hand_computed():
    z = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]],
            [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]],
        ],
        requires_grad=True,
    )
    w = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]],
            [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
        ]
    )
    anchors, present = sac_anchors_feature_pool(z, w)
    # class 0: sample 0 -> normalize((1 + 1.5, 0) / 1.5) = (1, 0); sample 1 -> (0, 1); mean -> (1, 1)/√2
    # class 1: sample 0 only -> normalize((1.5, 2) / 1.5) = (0.6, 0.8); class 2 absent
    expected = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.6, 0.8], [0.0, 0.0]])
    torch.testing.assert_close(anchors, expected)
    assert present.tolist() == [True, True, False]
    assert not anchors.requires_grad


def _pool_encoder(x: torch.Tensor) -> torch.Tensor:
    """Fixed 'encoder': 2-channel map (block mean of x, 1) on a /2 grid."""
    pooled = F.avg_pool3d(x, 2)
    return torch.cat([pooled, torch.ones_like(pooled)], dim=1)


def test_masked_image_anchors_hand_computed():
    image = torch.full((1, 1, 4, 4, 4), 2.0)
    label = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    label[..., :2, :2, :2] = 1  # class 1 fills token cell (0,0,0)
    anchors, present = sac_anchors_masked_image(_pool_encoder, image, label, 3, modules=[])
    # class 1: masked image is 2 in the cell -> token (2, 1), weight 1 there -> normalize((2, 1))
    torch.testing.assert_close(anchors[1], torch.tensor([2.0, 1.0]) / math.sqrt(5))
    # class 0: the other 7 cells, each value 2 and weight 1 -> normalize((2, 1)) as well
    torch.testing.assert_close(anchors[0], torch.tensor([2.0, 1.0]) / math.sqrt(5))
    assert present.tolist() == [True, True, False]
    no_bg, present_fg = sac_anchors_masked_image(_pool_encoder, image, label, 3, modules=[], include_background=False)
    assert present_fg.tolist() == [False, True, False]
    torch.testing.assert_close(no_bg[1], anchors[1])
    # nothing to anchor: zero anchors, nothing present
    empty, none_present = sac_anchors_masked_image(
        _pool_encoder, image, torch.zeros_like(label), 3, modules=[], include_background=False
    )
    assert empty.shape == (3, 2) and not empty.any() and not none_present.any()
    # tokens as (N, L, D) need the grid
    tokens_fn = lambda x: _pool_encoder(x).flatten(2).transpose(1, 2)  # noqa: E731
    same, _ = sac_anchors_masked_image(tokens_fn, image, label, 3, modules=[], token_shape=(2, 2, 2))
    torch.testing.assert_close(same, anchors)
    with pytest.raises(ValueError, match="token_shape"):
        sac_anchors_masked_image(tokens_fn, image, label, 3, modules=[])
    with pytest.raises(ValueError, match="modules="):
        sac_anchors_masked_image(tokens_fn, image, label, 3, token_shape=(2, 2, 2))


def test_masked_image_anchors_keep_bn_stats_and_train_mode():
    torch.manual_seed(0)
    net = VNet(spatial_dims=3, in_channels=1, out_channels=3, n_filters=4, has_dropout=True).train()
    extractor = TokenExtractor("encoder", in_channels=net.feature_channels[3], x_dim=4)
    scdl = SCDL(num_classes=3, x_dim=4, z_dim=8, num_proxy_samples=4).train()
    net(torch.randn(2, 1, 16, 16, 16))  # non-trivial running stats
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randn(2, 1, 16, 16, 16)
    labels = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    labels[0, :, :8] = 1
    labels[1, :, 4:12, 4:12, 4:12] = 2

    def encode(x):
        return scdl(extractor(net.encode(x)[3])).z

    anchors, present = sac_anchors_masked_image(
        encode, images, labels, 3, modules=[net, extractor, scdl], token_shape=(2, 2, 2), chunk_size=2
    )
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # running_mean/var and num_batches_tracked untouched
    assert all(m.training for m in net.modules()) and scdl.training and extractor.training
    assert anchors.shape == (3, 8) and present.tolist() == [True, True, True]
    assert not anchors.requires_grad
    torch.testing.assert_close(anchors.norm(dim=-1), torch.ones(3))
    # modules found from a bound method of an nn.Module
    sac_anchors_masked_image(net.forward, images, labels, 3)
    assert all(m.training for m in net.modules())
    # the SCDL projector's dropout makes anchors random unless eval_dropout
    kwargs = {"modules": [net, extractor, scdl], "token_shape": (2, 2, 2)}
    first, _ = sac_anchors_masked_image(encode, images, labels, 3, eval_dropout=True, **kwargs)
    second, _ = sac_anchors_masked_image(encode, images, labels, 3, eval_dropout=True, **kwargs)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    third, _ = sac_anchors_masked_image(encode, images, labels, 3, **kwargs)
    assert not torch.allclose(first, third)
    assert all(m.training for m in scdl.modules())


def test_masked_image_anchors_restore_modes_on_error():
    net = VNet(spatial_dims=3, in_channels=1, out_channels=2, n_filters=4).train()

    def broken(x):
        net.encode(x)
        raise RuntimeError("boom")

    labels = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    with pytest.raises(RuntimeError, match="boom"):
        sac_anchors_masked_image(broken, torch.zeros(1, 1, 16, 16, 16), labels, 2, modules=net)
    assert all(m.training for m in net.modules())


def test_p2e_and_e2p_masks_drop_tokens():
    torch.manual_seed(0)
    a, w = torch.rand(2, 5, 3) * 2 - 1, torch.softmax(torch.randn(2, 5, 3), -1)
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, True, True]])
    for form in ("code", "paper"):
        assert torch.allclose(P2ELoss(form)(a, w, mask), P2ELoss(form)(a[mask], w[mask]), atol=1e-6)
    assert torch.allclose(E2PLoss()(a, w, mask=mask), E2PLoss()(a[mask], w[mask]), atol=1e-6)
    assert torch.allclose(P2ELoss()(a, w, torch.ones(2, 5, dtype=torch.bool)), P2ELoss()(a, w), atol=1e-6)
    with pytest.raises(ValueError, match="mask"):
        P2ELoss()(a, w, mask[:, :3])


def test_balanced_p2e_normalises_positive_and_negative_mass_per_class():
    # class 1 fills one token of ten: unbalanced, its positive term weighs 1/10; balanced, 1/2
    a = torch.full((10, 2), 0.3)
    w = torch.zeros(10, 2)
    w[:, 0] = 1.0
    w[0] = torch.tensor([0.0, 1.0])
    per_class = P2ELoss(balanced=True, reduction="none")(a, w)
    e = math.exp
    assert per_class.tolist() == pytest.approx([(e(-0.3) + e(0.3)) / 2] * 2, rel=1e-6)
    plain = P2ELoss(reduction="none")(a, w)
    assert plain[1].item() == pytest.approx((e(-0.3) + 9 * e(0.3)) / 10, rel=1e-6)
    # a class without any positive token keeps only its negative half
    w2 = torch.zeros(4, 2)
    w2[:, 0] = 1.0
    assert P2ELoss(balanced=True, reduction="none")(torch.full((4, 2), 0.3), w2)[1].item() == pytest.approx(e(0.3))
    with pytest.raises(ValueError, match="balanced"):
        P2ELoss("paper", balanced=True)
