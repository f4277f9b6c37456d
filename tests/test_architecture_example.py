"""docs/architecture.md's smallest complete example runs: the method file trains a step, its overlay builds it."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from scdl_monai.methods.base import MethodOutput, SemiSupervisedMethod
from scdl_monai.networks.vnet import VNet

from .conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "architecture.md"


@pytest.fixture()
def example(tmp_path, monkeypatch):
    """The doc's method file written as ``my_methods/entropy_min.py`` on sys.path, and its overlay."""
    text = DOC.read_text()
    code = re.search(r"```python\n# my_methods/entropy_min.py\n(.*?)```", text, re.S).group(1)
    overlay = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    (tmp_path / "my_methods").mkdir()
    (tmp_path / "my_methods" / "__init__.py").write_text("")
    (tmp_path / "my_methods" / "entropy_min.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield overlay
    for name in [m for m in sys.modules if m.startswith("my_methods")]:
        del sys.modules[name]


def test_the_example_method_trains_one_step(example):
    from my_methods.entropy_min import EntropyMinimization

    torch.manual_seed(0)
    method = EntropyMinimization(VNet(out_channels=3, n_filters=4), entropy_weight=0.5)
    assert isinstance(method, SemiSupervisedMethod)
    image_l, image_u = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    label_l = torch.randint(0, 3, (2, 1, 16, 16, 16))
    out = method(image_l, label_l, image_u)
    assert isinstance(out, MethodOutput) and out.pred.shape == (2, 3, 16, 16, 16)
    assert torch.allclose(out.loss, out.terms["loss_sup"] + 0.5 * out.terms["loss_ent"])
    assert 0 < float(out.terms["loss_ent"]) <= float(torch.log(torch.tensor(3.0))) + 1e-5
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in method.parameters() if p.requires_grad)
    assert method.inference_network() is method.network


def test_the_example_overlay_builds_the_method_from_the_supervised_bundle(example):
    from my_methods.entropy_min import EntropyMinimization

    configs = REPO_ROOT / "bundles" / "supervised_synapse" / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json")])
    for key, value in example.items():  # MONAI's multi-file rule: a later file's key replaces
        parser[key] = value
    parser.update({"n_filters": 4, "device": "$torch.device('cpu')"})
    method = parser.get_parsed_content("method_def")
    assert type(method).__name__ == EntropyMinimization.__name__ and method.entropy_weight == 0.1
    assert method.network is parser.get_parsed_content("network")
    assert parser["train#trainer#unlabeled_data_loader"].replace("::", "#") == "@train#unlabeled_dataloader"
