"""SKCDF network: reference parameter counts, passes and heads, the decoupling / attention / SKC
switches, the VNet hooks and error messages."""

import pytest
import torch

from scdl_monai.networks.skcdf import SKCDFNetwork

PATCH = (32, 32, 32)


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return SKCDFNetwork(out_channels=3, n_filters=4, patch_size=PATCH, **kw)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_reference_parameter_counts():
    with torch.device("meta"):
        net = SKCDFNetwork(out_channels=14, n_filters=32, patch_size=(128, 128, 64))
    assert _count(net) == 50_917_320  # VNet_Decouple_Attention_ABC at C=14 (spec, verified on the reference)
    assert (_count(net.encoder), _count(net.decoder_l), _count(net.decoder_u)) == (29_495_296, 8_283_292, 8_283_292)


def test_passes_heads_and_inference_path():
    net = _net().eval()
    x = torch.randn(2, 1, *PATCH)
    out_l, out_u = net.labeled_pass(x), net.unlabeled_pass(x)
    assert out_l.logits.shape == out_l.balanced.shape == (2, 3, *PATCH)
    # inference = D_u main head in self mode = the unlabeled pass's main head
    torch.testing.assert_close(net(x), out_u.logits)
    logits, last = net.decode(net.encode(x))
    torch.testing.assert_close(logits, out_u.logits)
    assert last.shape == (2, 4, *PATCH) and net.head is net.decoder_u.head
    assert not torch.allclose(out_l.logits, out_u.logits)  # two decoders
    torch.testing.assert_close(_net(inference_head="balanced").eval()(x), _net().eval().unlabeled_pass(x).balanced)


def test_decoupling_switch_changes_only_the_second_pass():
    x = torch.randn(2, 1, *PATCH)
    on, off = _net(), _net(decoupled=False)
    assert off.decoder_u is None and _count(on) - _count(off) == _count(on.decoder_u)
    off.load_state_dict({k: v for k, v in on.state_dict().items() if not k.startswith("decoder_u.")})
    on.eval(), off.eval()
    torch.testing.assert_close(on.labeled_pass(x).logits, off.labeled_pass(x).logits)  # pass 1 unchanged
    torch.testing.assert_close(off.unlabeled_pass(x).logits, off.decoder_l(off.encode(x)).logits)  # D_l serves pass 2
    assert not torch.allclose(on.unlabeled_pass(x).logits, off.unlabeled_pass(x).logits)
    torch.testing.assert_close(off(x), off.unlabeled_pass(x).logits)  # inference falls back to the one decoder


def test_attention_switch_self_makes_the_labeled_pass_per_sample():
    x_l, x_u, other_u = (torch.randn(1, 1, *PATCH) for _ in range(3))
    for attention, independent in (("self", True), ("cross", False)):
        net = _net(attention=attention).eval()
        a = net.labeled_pass(torch.cat([x_l, x_u])).logits[0]
        b = net.labeled_pass(torch.cat([x_l, other_u])).logits[0]
        assert torch.allclose(a, b) == independent


def test_skc_disabled_is_the_plain_decoupled_network():
    net = _net(skc_enabled=False).eval()
    assert net.skc is None
    x = torch.randn(1, 1, 48, 32, 32)  # no global block: any size divisible by 16 works
    assert net(x).shape == (1, 3, 48, 32, 32)
    features = net.encoder(x)
    torch.testing.assert_close(net.encode(x)[-1], features[-1])


def test_reference_initialisation_is_xavier_on_convolutions_only():
    net = _net()
    bn = net.encoder.stages[0][0][1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    conv = net.skc.block("global").map_out[0].weight  # token learners and map_out are re-initialised too
    assert conv.std().item() == pytest.approx((2.0 / (conv.shape[0] + conv.shape[1])) ** 0.5, rel=0.2)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="patch_size"):
        SKCDFNetwork(out_channels=3, n_filters=4, patch_size=(30, 32, 32))
    with pytest.raises(ValueError, match="attention"):
        SKCDFNetwork(out_channels=3, n_filters=4, patch_size=PATCH, attention="mutual")
    with pytest.raises(ValueError, match="balanced_head"):
        SKCDFNetwork(out_channels=3, n_filters=4, patch_size=PATCH, balanced_head=False, inference_head="balanced")
    with pytest.raises(ValueError, match="differs from patch_size"):
        _net()(torch.randn(1, 1, 48, 32, 32))
