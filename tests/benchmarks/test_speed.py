"""CI smoke test of ``benchmarks/speed.py --quick`` (the full run needs a quiet machine).

The fewest configurations that cover every table: CPS (baseline), CPS + SCDL (feature_pool; the
SCDL-overhead table) and, through ``--fast-path``, CPS in bf16 + channels_last (the fast-path
table), each trained and run for inference through its bundle config in a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "benchmarks" / "speed.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_speed_quick_reports_a_row_per_configuration_with_overhead_and_fast_path(tmp_path):
    cmd = [sys.executable, SCRIPT, "--quick", "--configs", "cps", "cps+scdl[feature_pool]", "--fast-path",
           "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]

    configs = ["cps", "cps@fast", "cps+scdl[feature_pool]"]  # --fast-path: each fp32 run, then its fast run
    res = json.loads((tmp_path / "speed.json").read_text())
    assert res["quick"] and list(res["rows"]) == configs
    for name, row in res["rows"].items():
        assert row["status"] == "ok", (name, row.get("error"))
        assert row["median_s"] > 0 and row["median_cpu_s"] > 0 and row["voxels_per_s"] > 0
        assert 0.0 <= row["data_share"] <= 1.0
    assert res["rows"]["cps@fast"]["precision"]["precision"] in ("bf16", "fp32")  # fp32: CPU without bf16
    assert [(o["config"], o["sac_mode"]) for o in res["overheads"]] == [("cps+scdl[feature_pool]", "feature_pool")]
    assert [f["config"] for f in res["fast_paths"]] == ["cps"]

    md = (tmp_path / "speed.md").read_text()
    table = md.split("\n\n")[3].splitlines()  # the per-configuration table
    assert table[0].startswith("| configuration | params | s/it (median) |")
    rows = {cells[0]: cells for cells in ([c.strip() for c in ln.strip("|").split("|")] for ln in table[2:])}
    assert list(rows) == ["CPS", "CPS [bf16 + channels_last]", "CPS + SCDL (feature_pool)"]
    for cells in rows.values():
        assert float(cells[2]) > 0
        assert 0.0 <= float(cells[5].rstrip("%")) <= 100.0
