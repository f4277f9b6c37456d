"""SKC complementarity module: shapes, a hand-computed attention example, the gradient barrier of
cross mode, the reference head layouts, parameter counts and error messages."""

import numpy as np
import pytest
import torch

from scdl_monai.networks.skc import (
    ChannelAttention,
    GlobalComplementarityBlock,
    LocalComplementarityBlock,
    SKCModule,
    standardize_scores,
)


def _softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _standardize(s):
    return (s - s.mean()) / np.sqrt(s.var() + 1e-5)  # numpy var is the biased one


def _set(linear, matrix):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(matrix, dtype=torch.float32))


@pytest.mark.parametrize("spatial_dims,spatial", [(3, (2, 4, 4)), (3, (4, 2, 2)), (2, (4, 6))])
@pytest.mark.parametrize("mode", ["cross", "self"])
def test_blocks_and_module_keep_the_shape(spatial_dims, spatial, mode):
    torch.manual_seed(0)
    x = torch.randn(4, 8, *spatial)
    local = LocalComplementarityBlock(8, spatial_dims=spatial_dims)
    glob = GlobalComplementarityBlock(8, spatial, spatial_dims=spatial_dims)
    assert local(x, mode).shape == x.shape and glob(x, mode).shape == x.shape
    assert glob.token_learner.out_channels == int(np.prod(spatial))  # one learned token per voxel
    for blocks, fusion in ((["local", "global"], "sequential"), (["global", "local"], "sequential"),
                           (["local", "global"], "parallel_sum"), (["global"], "sequential")):  # fmt: skip
        skc = SKCModule(8, spatial, spatial_dims, blocks=blocks, fusion=fusion)
        assert skc(x, mode).shape == x.shape
        assert list(skc.blocks) == [f"{b}_block" for b in blocks] and all(skc.block(b) is skc.blocks[f"{b}_block"] for b in blocks)
    assert SKCModule(8, spatial, spatial_dims, blocks=[])(x, mode) is x  # no block: identity


def test_cross_attention_matches_a_hand_computation():
    """P = 1 per group, C = 2 channels, one head, N = 2 positions; numpy computes the expected output."""
    attn = ChannelAttention(channels=2, num_heads=1, dropout=0.0)
    wq, wk, wv, wo = [[1.0, 0.0], [0.0, 2.0]], [[0.5, 0.5], [0.0, 1.0]], [[1.0, -1.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]]
    for lin, w in zip((attn.q, attn.k, attn.v, attn.out), (wq, wk, wv, wo)):
        _set(lin, w)
    y_l = np.array([[1.0, 2.0], [0.0, 1.0]])  # (N, C)
    y_u = np.array([[2.0, 0.0], [1.0, -1.0]])
    tokens = torch.tensor(np.stack([y_l, y_u]), dtype=torch.float32)[:, None]  # (2, S=1, N, C)
    out = attn(tokens, "cross")[:, 0].detach().numpy()

    def expected(yq, yc):
        q, k, v = yq @ np.array(wq).T, yc @ np.array(wk).T, yc @ np.array(wv).T  # (N, C)
        a = _softmax(_standardize(q.T @ k))  # (C, C): channel tokens, no 1/sqrt(d)
        return (a @ v.T).T @ np.array(wo).T

    np.testing.assert_allclose(out[0], expected(y_l, y_u), rtol=1e-5, atol=1e-6)  # labeled queries, unlabeled keys
    np.testing.assert_allclose(out[1], expected(y_u, y_l), rtol=1e-5, atol=1e-6)


def test_cross_attention_keys_concatenate_all_samples_of_the_other_group():
    torch.manual_seed(1)
    attn = ChannelAttention(channels=3, num_heads=2, dropout=0.0).double()
    tokens = torch.randn(4, 1, 5, 3, dtype=torch.float64)  # P = 2
    w = [m.weight.detach().numpy() for m in (attn.q, attn.k, attn.v, attn.out)]
    y = tokens[:, 0].numpy()
    k_u = np.concatenate([y[j] @ w[1].T for j in (2, 3)], axis=1)  # (N, P·HC), sample-major
    v_u = np.concatenate([y[j] @ w[2].T for j in (2, 3)], axis=1)
    a = _softmax(_standardize((y[0] @ w[0].T).T @ k_u))  # (HC, P·HC): heads not separated
    np.testing.assert_allclose(attn(tokens, "cross")[0, 0].detach().numpy(), (a @ v_u.T).T @ w[3].T, rtol=1e-9)


@pytest.mark.parametrize("split,merge", [("interleaved", "interleaved"), ("contiguous", "interleaved"), ("contiguous", "contiguous")])
def test_self_attention_head_layouts(split, merge):
    """Two heads of C = 2: the projected feature of head h, channel c is c·H + h (interleaved) or h·C + c."""
    torch.manual_seed(2)
    attn = ChannelAttention(2, num_heads=2, dropout=0.0, self_head_split=split, self_head_merge=merge).double()
    y = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    w = [m.weight.detach().numpy() for m in (attn.q, attn.k, attn.v, attn.out)]
    yn = y[0, 0].numpy()
    q, k, v = (yn @ m.T for m in w[:3])  # (N, 4)

    def cols(layout, h):
        return [c * 2 + h for c in range(2)] if layout == "interleaved" else [h * 2 + c for c in range(2)]

    merged = np.zeros((3, 4))
    for h in range(2):
        a = _softmax(_standardize(q[:, cols(split, h)].T @ k[:, cols(split, h)]))  # one (C, C) map per head
        merged[:, cols(merge, h)] = (a @ v[:, cols(split, h)].T).T
    np.testing.assert_allclose(attn(y, "self")[0, 0].detach().numpy(), merged @ w[3].T, rtol=1e-9)


def test_standardize_scores_is_instance_norm_over_each_map():
    s = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])
    mean, var = s.mean(), s.var(unbiased=False)
    torch.testing.assert_close(standardize_scores(s), (s - mean) / torch.sqrt(var + 1e-5))


@pytest.mark.parametrize("block", ["local", "global"])
def test_cross_mode_labeled_outputs_send_no_gradient_into_the_unlabeled_inputs(block):
    torch.manual_seed(3)
    x_l = torch.randn(2, 8, 2, 4, 4, requires_grad=True)
    x_u = torch.randn(2, 8, 2, 4, 4, requires_grad=True)
    for detach, barrier in ((True, True), (False, False)):
        skc = SKCModule(8, (2, 4, 4), blocks=[block], detach_unlabeled=detach, dropout=0.0)
        out = skc(torch.cat([x_l, x_u]), "cross")
        (g_u,) = torch.autograd.grad(out[:2].sum(), x_u, allow_unused=True, retain_graph=True)
        assert (g_u is None or not g_u.abs().sum()) == barrier  # the detach switch is what stops it
        (g_l,) = torch.autograd.grad(out[:2].sum(), x_l, retain_graph=True)
        assert g_l.abs().sum() > 0
        # the unlabeled outputs do depend on the labeled inputs (keys/values with gradient)
        (g_ul,) = torch.autograd.grad(out[2:].sum(), x_l)
        assert g_ul.abs().sum() > 0


def test_cross_mode_mixes_the_groups_and_self_mode_does_not():
    torch.manual_seed(4)
    skc = SKCModule(8, (2, 2, 2), dropout=0.0).eval()
    x = torch.randn(2, 8, 2, 2, 2)
    other = torch.cat([x[:1], torch.randn(1, 8, 2, 2, 2)])  # same labeled sample, new unlabeled one
    assert not torch.allclose(skc(x, "cross")[0], skc(other, "cross")[0])
    torch.testing.assert_close(skc(x, "self")[0], skc(other, "self")[0])


def test_reference_parameter_counts():
    with torch.device("meta"):
        skc = SKCModule(512, (4, 8, 8))
        lean = SKCModule(512, (4, 8, 8), unused_token_params=False)
    count = {name: sum(p.numel() for p in skc.block(name).parameters()) for name in skc.block_names}
    assert count == {"local": 2_362_000, "global": 2_493_440}  # SKCDF.py at 64×128×128, verified in the spec
    assert sum(p.numel() for p in skc.parameters()) - sum(p.numel() for p in lean.parameters()) == 65_864  # map_in


def test_errors_name_the_argument():
    skc = SKCModule(8, (2, 2, 2))
    with pytest.raises(ValueError, match="even batch"):
        skc(torch.randn(3, 8, 2, 2, 2), "cross")
    with pytest.raises(ValueError, match="spatial size"):
        skc(torch.randn(2, 8, 4, 4, 4), "self")
    with pytest.raises(ValueError, match="divisible by the window"):
        LocalComplementarityBlock(8)(torch.randn(2, 8, 3, 4, 4))
    with pytest.raises(ValueError, match="blocks"):
        SKCModule(8, (2, 2, 2), blocks=["lokal"])
    with pytest.raises(ValueError, match="repeat"):
        SKCModule(8, (2, 2, 2), blocks=["local", "local"])
    with pytest.raises(ValueError, match="fusion"):
        SKCModule(8, (2, 2, 2), fusion="concat")
    with pytest.raises(ValueError, match="mode"):
        skc(torch.randn(2, 8, 2, 2, 2), "labeled")
    with pytest.raises(ValueError, match="self_head_layout"):
        GlobalComplementarityBlock(8, (2, 2, 2), self_head_layout="mixed")
