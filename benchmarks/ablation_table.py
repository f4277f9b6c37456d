"""One table for an ablation: each variant's runs against the baseline's runs of the same seeds.

An ablation variant is a ``benchmarks/quality.py`` output folder made with ``--set`` overrides
(``--out <root>/<variant>``); its ``runs/<config>_seed<N>.json`` are compared with the runs of the
same configuration and seed in ``--reference`` (the main table, default ``benchmarks/results``) and
with the baseline configuration (``--baseline``, e.g. ``dhc`` for ``dhc+scdl``) of the same seed.
Per row: test Avg Dice of the best-validation and of the last-iteration model, the tail-organ
Dice (best-validation model), the best-validation iteration, the worst validation score after it
(how far a run falls after its best), and the paired difference to the baseline.

Usage (repository root)::

    python benchmarks/ablation_table.py benchmarks/results/scdl_ablation --config dhc+scdl --baseline dhc \\
        --out benchmarks/results/scdl_ablation/ablation.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import atomic_write  # noqa: E402
from quality import RESULTS, TAIL_ORGANS, _avg_of, _mean_std, _tail_of  # noqa: E402


def load_runs(folder: Path, config: str) -> dict[int, dict]:
    """``{seed: run}`` of the finished runs of ``config`` in ``folder/runs``."""
    out = {}
    for path in sorted((folder / "runs").glob(f"{config}_seed*.json")):
        run = json.loads(path.read_text())
        if run.get("status") == "ok" and run.get("config") == config:
            out[int(run["seed"])] = run
    return out


def describe(run: dict) -> dict:
    curve = run.get("curve") or []
    after = [d for it, d in curve if it > run.get("best_iteration", 0)]
    return {
        "best": _avg_of(run["summary"]),
        "last": _avg_of(run["summary_last"]),
        "tail": _tail_of(run["summary"], TAIL_ORGANS),
        "best_iteration": run.get("best_iteration"),
        "worst_after_best": min(after) if after else math.nan,
    }


def _fmt(x: float, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def table(variants: dict[str, dict[int, dict]], baseline: dict[int, dict], baseline_name: str) -> str:
    lines = [
        f"| Variant | Seed | Best-val model Dice | Last-iteration Dice | Tail Dice | Best it. | Worst val. after best "
        f"| Δ best vs {baseline_name} | Δ last vs {baseline_name} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, run in sorted(baseline.items()):
        d = describe(run)
        lines.append(f"| {baseline_name} (baseline) | {seed} | {_fmt(d['best'])} | {_fmt(d['last'])} | {_fmt(d['tail'])} "
                     f"| {d['best_iteration']} | {_fmt(d['worst_after_best'])} | | |")  # fmt: skip
    for name, runs in variants.items():
        deltas = []
        for seed, run in sorted(runs.items()):
            d = describe(run)
            base = describe(baseline[seed]) if seed in baseline else None
            db = d["best"] - base["best"] if base else math.nan
            dl = d["last"] - base["last"] if base else math.nan
            deltas.append((db, dl))
            lines.append(f"| {name} | {seed} | {_fmt(d['best'])} | {_fmt(d['last'])} | {_fmt(d['tail'])} | {d['best_iteration']} "
                         f"| {_fmt(d['worst_after_best'])} | {_fmt(db, True)} | {_fmt(dl, True)} |")  # fmt: skip
        paired = [(b, lst) for b, lst in deltas if not math.isnan(b)]
        if len(paired) > 1:
            (mb, sb), (ml, sl) = (_mean_std(list(v)) for v in zip(*paired))
            improved = sum(b > 0 for b, _ in paired)
            lines.append(f"| {name} (mean ± std over {len(paired)} seeds; {improved} improved) | | | | | | "
                         f"| {mb:+.2f} ± {sb:.2f} | {ml:+.2f} ± {sl:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder holding one quality.py output folder per variant")
    parser.add_argument("--config", required=True, help="the ablated configuration, e.g. dhc+scdl")
    parser.add_argument("--baseline", required=True, help="the configuration compared with, e.g. dhc")
    parser.add_argument("--reference", default=str(RESULTS), help="main table folder (its runs are the default variant)")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    root, reference = Path(args.root), Path(args.reference)
    if not root.is_dir():
        parser.error(f"{root}: no such folder")
    baseline = load_runs(reference, args.baseline)
    if not baseline:
        parser.error(f"{reference}/runs: no finished run of the baseline {args.baseline!r}")
    variants = {"defaults (main table)": load_runs(reference, args.config)}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        runs = load_runs(folder, args.config)
        if runs:
            settings = json.loads((folder / "quality.json").read_text()).get("extra_overrides") if (folder / "quality.json").is_file() else None
            label = folder.name + (f" `{json.dumps(settings, sort_keys=True)}`" if settings else "")
            variants[label] = runs
    md = table(variants, baseline, args.baseline)
    print(md, end="")
    if args.out:
        atomic_write(Path(args.out), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
