"""CI smoke test of ``benchmarks/quality.py --quick`` (issue 8).

Runs the command on a subset of configurations (the full ``--quick`` list takes ~2 min here):
the labeled-only baseline, CPS + SCDL (the SCDL overlay path) and an unknown method whose failure
must appear as a table row with its error instead of disappearing. ~30 s on 2 shared cores: it
trains through the real bundle configs in subprocesses, which is what the benchmark measures.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ORGANS = ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior vena cava", "portal & splenic veins", "pancreas", "right adrenal gland", "left adrenal gland"]  # fmt: skip


def test_quality_quick_table_has_a_row_per_method_and_a_column_per_organ(tmp_path):
    configs = ["supervised", "cps+scdl", "no_such_method"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--quick", "--seeds", "0",
           "--out", str(tmp_path), "--configs", *configs]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    md = (tmp_path / "quality.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Method | Avg Dice"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", "Avg Dice", "Avg ASD (mm)", *ORGANS]
    rows = [line for line in md.splitlines() if line.startswith("| ") and "Avg Dice" not in line]
    width = 3 + len(ORGANS)  # the main table's rows (the second table has 5 columns)
    for label in ("Supervised (20% labeled only)", "CPS + SCDL"):
        (row,) = [r for r in rows if r.startswith(f"| {label} |") and len(r.strip("|").split("|")) == width]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(0.0 <= float(c) <= 100.0 for c in [cells[1]] + cells[3:])  # Dice in %
    assert any(r.startswith("| no_such_method | FAILED") for r in rows)

    with open(tmp_path / "quality.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["config"] for r in table] == configs
    for organ in ORGANS:
        assert f"{organ} dice_mean" in table[0]
    ok = {r["config"]: r for r in table}
    assert 0.0 <= float(ok["supervised"]["avg_dice_mean"]) <= 100.0
    assert float(ok["cps+scdl"]["liver dice_mean"]) >= 0.0
    assert "method must be one of" in ok["no_such_method"]["error"]
    assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads((tmp_path / "quality.json").read_text())["runs"]
    assert {(r["config"], r["status"]) for r in runs} == {("supervised", "ok"), ("cps+scdl", "ok"),
                                                          ("no_such_method", "error")}  # fmt: skip
