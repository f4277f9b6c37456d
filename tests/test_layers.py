"""The package layout draws the architecture: no module imports from a higher layer (scdl_monai._layers).

Every ``import`` / ``from ... import`` of every module is read with ``ast`` (also those inside
functions, which run later but still couple the layers); relative imports are resolved.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import scdl_monai
from scdl_monai._layers import LAYERS, layer_of

PACKAGE = Path(scdl_monai.__file__).resolve().parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from pkg import sub` may name a submodule: check it as one
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def is_alias_module(path: Path) -> bool:
    """A deprecated top-level alias: it resolves its names through scdl_monai._deprecation."""
    text = path.read_text()
    return "scdl_monai._deprecation" in text and "__getattr__" in text


def upward_imports(root: Path) -> list[str]:
    """Every import in the package at ``root`` that reaches above its module's layer."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        src_layer = layer_of(source)
        if src_layer is None:
            continue  # the package root and the deprecated aliases stand outside the layers
        for line, target in imported_modules(path, root):
            if target.split(".")[0] != "scdl_monai" or target == "scdl_monai" or target == "scdl_monai.__version__":
                continue
            dst_layer = layer_of(target)
            if dst_layer is None or dst_layer > src_layer:
                where = "a deprecated alias" if dst_layer is None else f"layer {dst_layer} {LAYERS[dst_layer]}"
                problems.append(
                    f"{path.relative_to(root.parent)}:{line}: {source} (layer {src_layer} {LAYERS[src_layer]}) "
                    f"imports {target} ({where})"
                )
    return problems


def test_no_module_imports_a_higher_layer():
    assert upward_imports(PACKAGE) == []


def test_every_module_belongs_to_a_layer_or_is_a_deprecated_alias():
    unplaced = [
        p.name
        for p in sorted(PACKAGE.iterdir())
        if (p.is_dir() and (p / "__init__.py").is_file() or p.suffix == ".py")
        and p.name != "__init__.py"
        and layer_of(f"scdl_monai.{p.stem}") is None
        and not (p.suffix == ".py" and is_alias_module(p))
    ]
    assert unplaced == [], f"add these to scdl_monai._layers.LAYERS: {unplaced}"


def test_layer_names_are_distinct_and_exist():
    names = [n for layer in LAYERS for n in layer]
    assert len(names) == len(set(names))
    missing = [n for n in names if not ((PACKAGE / n).is_dir() or (PACKAGE / f"{n}.py").is_file())]
    assert missing == []


def test_the_check_catches_an_upward_import_also_inside_a_function_and_relative(tmp_path):
    pkg = tmp_path / "scdl_monai"
    for sub in ("data", "methods", "losses"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "methods" / "cps.py").write_text("from scdl_monai.data.utils import as_flag\n")  # downward: fine
    (pkg / "data" / "bad.py").write_text("def f():\n    from scdl_monai.methods.cps import CPS\n")
    (pkg / "losses" / "worse.py").write_text("from ..methods import cps\n")
    (pkg / "losses" / "alias.py").write_text("import scdl_monai.precision\n")
    problems = upward_imports(pkg)
    assert len(problems) == 3
    assert any("data/bad.py:2" in p and "scdl_monai.methods.cps" in p for p in problems)
    assert any("losses/worse.py:1" in p and "scdl_monai.methods.cps" in p for p in problems)
    assert any("losses/alias.py:1" in p and "a deprecated alias" in p for p in problems)


def test_old_module_path_target_resolves_and_warns(tmp_path):
    """A bundle trained with the previous layout names ``scdl_monai.precision.PrecisionPolicy`` etc."""
    from monai.bundle import ConfigParser

    from scdl_monai.engines.precision import PrecisionPolicy

    config = {  # as in train.json of the previous layout
        "precision": {"_target_": "scdl_monai.precision.PrecisionPolicy", "precision": "fp32"},
        "resume_from": {"_target_": "scdl_monai.bundles.resume_checkpoint", "ckpt_dir": str(tmp_path), "resume": "true"},
    }
    parser = ConfigParser(config)
    with pytest.warns(DeprecationWarning, match=r"scdl_monai\.precision\.PrecisionPolicy .*scdl_monai\.engines\.precision"):
        policy = parser.get_parsed_content("precision")
    assert type(policy) is PrecisionPolicy and policy.precision == "fp32"
    with pytest.warns(DeprecationWarning, match=r"scdl_monai\.handlers\.checkpoint\.resume_checkpoint"):
        assert parser.get_parsed_content("resume_from") == str(tmp_path.resolve() / "checkpoint*.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        import scdl_monai.precision as old  # importing the alias alone is silent; its names warn once

        assert old.PrecisionPolicy is PrecisionPolicy  # second use: no new warning
