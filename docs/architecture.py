"""Draw docs/architecture.png: the layers of scdl_monai (scdl_monai._layers.LAYERS) and their modules.

Run from the repository root after adding, moving or renaming a module::

    python docs/architecture.py            # writes docs/architecture.png
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from scdl_monai._layers import LAYERS  # noqa: E402

PACKAGE = ROOT / "scdl_monai"
#: what each layer is for (one line in the figure)
ROLES = (
    "helpers (standard library only)",
    "data: datasets, splits, transforms -> tensors",
    "networks: tensors -> tensors",
    "losses / weighting: tensors -> scalars and class weights",
    "methods: one training step of an algorithm",
    "engines / handlers / evaluation: run steps in MONAI's Workflow, fire events, score",
    "bundles / cli: which pieces are used; the commands",
)


def modules(name: str) -> list[str]:
    """Module names of a subpackage (without ``__init__``), or ``[name]`` for a top-level module."""
    folder = PACKAGE / name
    if not folder.is_dir():
        return [name]
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__",))


def draw(out: Path) -> Path:
    rows = len(LAYERS)
    fig, ax = plt.subplots(figsize=(14, 1.55 * rows + 0.6))
    ax.set_xlim(0, 14)
    ax.set_ylim(0, 1.55 * rows + 0.2)
    ax.axis("off")
    colours = plt.get_cmap("Pastel1")
    for i, (names, role) in enumerate(zip(LAYERS, ROLES)):
        y = 0.15 + 1.55 * i
        ax.add_patch(FancyBboxPatch((0.9, y), 13.0, 1.35, boxstyle="round,pad=0.02", fc=colours(i % 9), ec="0.4"))
        ax.text(1.0, y + 1.22, f"{i}  {role}", fontsize=9.5, weight="bold", va="top")
        width = 12.7 / len(names)
        for j, name in enumerate(names):
            x = 1.05 + j * width
            ax.add_patch(FancyBboxPatch((x, y + 0.08), width - 0.15, 0.88, boxstyle="round,pad=0.02", fc="white", ec="0.6"))
            label = name if not (PACKAGE / name).is_dir() else f"{name}/"
            ax.text(x + 0.08, y + 0.86, label, fontsize=9, weight="bold", va="top", family="monospace")
            body = textwrap.fill(", ".join(m for m in modules(name) if m != name), width=int(width * 13.5))
            ax.text(x + 0.08, y + 0.62, body, fontsize=7.2, va="top", family="monospace")
    ax.add_patch(FancyArrowPatch((0.45, 1.55 * rows - 0.2), (0.45, 0.3), arrowstyle="-|>", mutation_scale=18, color="0.3"))
    ax.text(0.2, 0.78 * rows, "imports point down only", rotation=90, va="center", ha="center", fontsize=9)
    ax.set_title("scdl_monai layers (tests/test_layers.py fails on an upward import)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "architecture.png"))
