"""benchmarks/ablation_table.py: variants against the baseline of the same seeds, paired differences."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "benchmarks" / "ablation_table.py")
TAIL = ["gallbladder", "esophagus", "portal & splenic veins", "pancreas", "right adrenal gland", "left adrenal gland"]


def _summary(avg: float, tail: float) -> list[dict]:
    rows = [{"class_index": i, "class_name": name, "dice_mean": tail} for i, name in enumerate(TAIL, start=1)]
    return rows + [{"class_index": "avg", "class_name": "Avg", "dice_mean": avg}]


def _write(folder: Path, config: str, seed: int, best: float, last: float, curve: list) -> None:
    run = {"config": config, "seed": seed, "status": "ok", "summary": _summary(best, best - 10),
           "summary_last": _summary(last, last - 10), "curve": curve, "best_iteration": 200}  # fmt: skip
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / f"{config}_seed{seed}.json").write_text(json.dumps(run))


def test_paired_rows_and_the_fall_after_the_best(tmp_path):
    ref, root = tmp_path / "ref", tmp_path / "ablation"
    for seed, (b, lst) in enumerate([(70.0, 70.0), (72.0, 71.0)]):
        _write(ref, "dhc", seed, b, lst, [[100, 60.0], [200, b], [300, lst]])
        _write(ref, "dhc+scdl", seed, b - 1, lst - 20, [[100, 60.0], [200, b - 1], [300, lst - 20]])
    variant = root / "labeled_only"
    for seed in (0, 1):
        _write(variant, "dhc+scdl", seed, 71.0 + seed, 70.0 + seed, [[100, 60.0], [200, 71.0], [300, 69.5]])
    (variant / "quality.json").write_text(json.dumps({"extra_overrides": {"scdl_token_scope": "labeled"}}))
    out = tmp_path / "table.md"
    proc = subprocess.run([sys.executable, SCRIPT, str(root), "--config", "dhc+scdl", "--baseline", "dhc",
                           "--reference", str(ref), "--out", str(out)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in out.read_text().splitlines()}
    variant_row = rows[('labeled_only `{"scdl_token_scope": "labeled"}`', "1")]
    assert "| 72.00 | 71.00 | 62.00 | 200 | 69.50 | +0.00 | +0.00 |" in variant_row
    defaults = next(v for k, v in rows.items() if k[0].startswith("defaults (main table) (mean"))
    assert "0 improved" in defaults and "-1.00 ± 0.00 | -20.00 ± 0.00 |" in defaults
    assert proc.stdout == out.read_text()


def test_missing_baseline_is_one_line(tmp_path):
    (tmp_path / "ablation").mkdir()
    proc = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "ablation"), "--config", "dhc+scdl", "--baseline", "dhc",
                           "--reference", str(tmp_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no finished run of the baseline 'dhc'" in proc.stderr
    assert "Traceback" not in proc.stderr
