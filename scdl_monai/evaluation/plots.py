"""Per-class bar chart (Dice and ASD) with error bars, for summaries from :mod:`scdl_monai.evaluation.tables`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scdl_monai.evaluation.files import atomic_write
from scdl_monai.evaluation.tables import AVG_INDEX

__all__ = ["plot_class_bars"]


def plot_class_bars(rows: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Save a PNG with one Dice panel and one ASD panel, a bar per class (and the Avg).

    Error bars are the row's std: over cases for a single-run summary, over runs for a combined
    table (``std_over`` column). NaN means are drawn as empty bars labelled ``n/a``.

    Args:
        rows: summary rows (:data:`~scdl_monai.evaluation.tables.SUMMARY_COLUMNS`).
        path: output PNG, written atomically.
        title: figure title.

    Returns:
        ``path``.
    """
    # Agg canvas on a bare Figure: no pyplot, no global backend switch, works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(r["class_name"]) for r in rows]
    unit = str(rows[0]["distance_unit"])
    std_over = str(rows[0]["std_over"])
    fig = Figure(figsize=(max(6.0, 0.6 * len(rows) + 2), 7), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, metric, label in ((axes[0], "dice", "Dice (%)"), (axes[1], "asd", f"ASD ({unit})")):
        means = [float(r[f"{metric}_mean"]) for r in rows]
        stds = [float(r[f"{metric}_std"]) for r in rows]
        heights = [0.0 if math.isnan(m) else m for m in means]
        errs = [0.0 if math.isnan(s) else s for s in stds]
        colors = ["tab:orange" if str(r["class_index"]) == AVG_INDEX else "tab:blue" for r in rows]
        ax.bar(range(len(rows)), heights, yerr=errs, color=colors, capsize=3)
        for i, m in enumerate(means):
            if math.isnan(m):
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(range(len(rows)))
    axes[1].set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    suffix = f"error bars: std over {std_over}"
    fig.suptitle(f"{title} ({suffix})" if title else suffix, fontsize=10)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
