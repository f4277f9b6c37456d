"""The shipped bundles infer as the reference test scripts (``scdl_monai.bundles.fidelity.INFERENCE``), and
``docs/fidelity.md`` shows exactly those records; a drift in a bundle, the docs or the records fails."""

import math
from fractions import Fraction

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data.utils import dense_patch_slices
from torch import nn

from scdl_monai.bundles import METHODS, VARIANTS, bundle_name
from scdl_monai.bundles.fidelity import INFERENCE, markdown_table, reference_overlap
from scdl_monai.methods.base import LogitMean
from scdl_monai.engines.policy_inferer import PolicyInferer

from ..conftest import REPO_ROOT

BUNDLES = REPO_ROOT / "bundles"


def _parser(name, *files):
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / name / "configs" / f) for f in files])
    parser["amp"] = False
    return parser


def test_every_method_has_a_record_and_the_known_reference_strides():
    assert set(INFERENCE) == set(METHODS)
    # the strides as read in the reference scripts (see the records' sources)
    assert INFERENCE["dhc"].stride == INFERENCE["cps"].stride == INFERENCE["supervised"].stride == (32, 32, 16)
    assert INFERENCE["ga_cps"].stride == INFERENCE["ga_magicnet"].stride == (32, 32, 16)
    assert INFERENCE["magicnet"].stride == (16, 16, 16)
    assert INFERENCE["genericssl"].stride == (16, 16, 4)
    assert reference_overlap("dhc") == (Fraction(3, 4),) * 3
    assert reference_overlap("ga_cps") == (Fraction(2, 3), Fraction(2, 3), Fraction(5, 6))
    assert reference_overlap("genericssl") == (Fraction(7, 8), Fraction(7, 8), Fraction(15, 16))


@pytest.mark.parametrize("method,dataset,scdl", VARIANTS, ids=[bundle_name(*c[:2]) + ("+scdl" if c[2] else "") for c in VARIANTS])
def test_shipped_bundle_inferer_equals_the_reference(method, dataset, scdl):
    rec = INFERENCE[method]
    name = bundle_name(method, dataset)
    plugin = ("scdl.json",) if scdl else ()
    for files, inferer_id, post_id in (
        (("inference.json",), "inferer", "postprocessing#transforms#0"),
        (("train.json",), "validate#inferer", "validate#postprocessing#transforms#0"),
        (("train.json", "evaluate.json"), "validate#inferer", "validate#postprocessing#transforms#0"),
    ):
        parser = _parser(name, *files, *plugin)
        inferer = parser.get_parsed_content(inferer_id)
        assert isinstance(inferer, PolicyInferer)
        requested = inferer.requested_overlap
        assert [float(o) for o in requested] == pytest.approx([float(o) for o in reference_overlap(method)]), name
        patch = list(parser.get_parsed_content("patch_size"))
        if patch == list(rec.patch):  # the reference's own window: exactly its strides
            assert inferer.scan_interval == rec.stride, (name, files)
        else:  # another protocol's patch (e.g. "native" 96x96x64): the same overlap fractions
            expected = tuple(round(p * (1 - o)) for p, o in zip(patch, reference_overlap(method)))
            assert inferer.scan_interval == expected, (name, files)
        assert inferer.fusion == "probabilities", (name, files)
        assert inferer.mode == "constant"  # the references divide by the window count
        # the windows are probabilities already: no second softmax in the post-processing
        assert parser.get_parsed_content(f"{post_id}#_target_") == "Activationsd"
        assert parser.get_parsed_content(f"{post_id}#softmax") is False, (name, files)


def test_the_logits_switch_restores_logit_averaging_and_the_post_softmax():
    parser = _parser(bundle_name("dhc", "synapse"), "inference.json")
    parser["sw_fusion"] = "logits"
    assert parser.get_parsed_content("inferer").fusion == "logits"
    assert parser.get_parsed_content("postprocessing#transforms#0#softmax") is True


@pytest.mark.parametrize("method", METHODS)
def test_docs_fidelity_shows_the_records(method):
    text = (REPO_ROOT / "docs" / "fidelity.md").read_text()
    assert markdown_table(method) in text, f"docs/fidelity.md: the {method} table differs from scdl_monai.bundles.fidelity"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [(160, 160, 80), (200, 171, 97), (96, 96, 96)])
def test_monai_window_positions_equal_the_reference_loops(method, size):
    """Reference: ``n = ceil((size - p) / s) + 1`` windows starting at ``min(i * s, size - p)`` per axis."""
    rec = INFERENCE[method]
    inferer = PolicyInferer(list(rec.patch), overlap=[float(o) for o in reference_overlap(method)])
    padded = [max(n, p) for n, p in zip(size, rec.patch)]  # both pad a smaller axis up to the window
    ours = dense_patch_slices(padded, rec.patch, inferer.scan_interval)
    expected = set()
    starts = [
        [min(i * s, n - p) for i in range(math.ceil((n - p) / s) + 1)] for n, p, s in zip(padded, rec.patch, rec.stride)
    ]
    for x in starts[0]:
        for y in starts[1]:
            for z in starts[2]:
                expected.add((x, y, z))
    assert {tuple(sl.start for sl in w) for w in ours} == expected


class _SumLogits(nn.Module):
    """Class-1 logit = sum of the window's input (same for every voxel of the window), class 0 = 0."""

    def __init__(self, offset=0.0, scale=1.0):
        super().__init__()
        self.offset, self.scale = offset, scale

    def forward(self, x):
        s = self.scale * x.sum(dim=(1, 2, 3, 4), keepdim=True) + self.offset
        return torch.cat([torch.zeros_like(x), s.expand_as(x)], dim=1)


def _sigmoid(v):
    return 1 / (1 + math.exp(-v))


def test_per_window_softmax_fusion_of_two_windows_by_hand():
    # 1x1x3 volume [0, 1, 3], window 1x1x2, overlap 0.5 -> windows [0, 1] (sum 1) and [1, 3] (sum 4)
    x = torch.tensor([0.0, 1.0, 3.0]).reshape(1, 1, 1, 1, 3)
    probs = PolicyInferer((1, 1, 2), overlap=0.5, fusion="probabilities")(x, _SumLogits())
    logits = PolicyInferer((1, 1, 2), overlap=0.5, fusion="logits")(x, _SumLogits())
    # voxel 0: window 1 only; voxel 1: mean of both windows' probabilities; voxel 2: window 2 only
    expected = [_sigmoid(1), (_sigmoid(1) + _sigmoid(4)) / 2, _sigmoid(4)]
    assert probs[0, 1, 0, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert probs.sum(dim=1).flatten().tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    # logit fusion: voxel 1 is softmax of the mean logit 2.5, a different number
    assert logits[0, 1, 0, 0].tolist() == pytest.approx([1.0, 2.5, 4.0], abs=1e-6)
    assert _sigmoid(2.5) != pytest.approx(expected[1], abs=1e-3)


def test_two_network_ensemble_averages_logits_inside_each_window_then_softmax():
    # A: class-1 logit = window sum, B: constant 3 -> mean (sum + 3) / 2: window 1 -> 2, window 2 -> 3.5
    ensemble = LogitMean([_SumLogits(), _SumLogits(offset=3.0, scale=0.0)])
    x = torch.tensor([0.0, 1.0, 3.0]).reshape(1, 1, 1, 1, 3)
    out = PolicyInferer((1, 1, 2), overlap=0.5, fusion="probabilities")(x, ensemble)
    expected = [_sigmoid(2), (_sigmoid(2) + _sigmoid(3.5)) / 2, _sigmoid(3.5)]
    assert out[0, 1, 0, 0].tolist() == pytest.approx(expected, abs=1e-6)
