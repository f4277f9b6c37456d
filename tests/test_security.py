"""Security rules of the package (docs/reliability.md): checkpoints are loaded without unpickling code, and no
data or file content is evaluated as Python. Bundle configs themselves are code (README, Security)."""

import ast
import pickle
from pathlib import Path

import pytest
import torch

from scdl_monai.engines.preflight import check_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "scdl_monai"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            yield name, func, node


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_unsafe_loading_or_evaluation(path):
    tree = ast.parse(path.read_text())
    for name, func, node in _calls(tree):
        where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
        if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch":
            weights_only = [k for k in node.keywords if k.arg == "weights_only"]
            assert weights_only and getattr(weights_only[0].value, "value", None) is True, f"{where}: torch.load without weights_only=True"
        assert not (isinstance(func, ast.Name) and name in ("eval", "exec")), f"{where}: {name}() call"
        assert not (name in ("load", "loads") and getattr(getattr(func, "value", None), "id", "") == "pickle"), where


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/scdl_monai_payload_ran"),))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path):
    marker = Path("/tmp/scdl_monai_payload_ran")
    marker.unlink(missing_ok=True)
    torch.save({"model": _Payload()}, tmp_path / "evil.pt", pickle_module=pickle)
    (problem,) = check_checkpoint(tmp_path / "evil.pt", {"model": torch.nn.Linear(2, 2)})
    assert problem.startswith(f"checkpoint='{tmp_path / 'evil.pt'}' holds Python objects besides tensors (Unsupported global:")
    assert problem.endswith("was not an allowed global by default): refused, since unpickling them could run code")
    assert not marker.exists()
