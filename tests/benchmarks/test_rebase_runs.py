"""``benchmarks/rebase_runs.py``: which stored runs it re-keys, the behaviour check, the record it keeps."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from rebase_runs import classify, differences, rekeyed  # noqa: E402


def _run(fp: str) -> tuple[Path, dict]:
    return Path("x.json"), {"fingerprint": fp, "status": "ok"}


def test_classify_rekeys_only_runs_of_the_old_commit():
    runs = {("cps", 0): _run("new0"), ("cps", 1): _run("old1"), ("dhc", 0): _run("older"), ("dhc", 1): _run("old3")}
    old = {("cps", 0): "old0", ("cps", 1): "old1", ("dhc", 0): "old2", ("dhc", 1): "old3"}
    new = {("cps", 0): "new0", ("cps", 1): "new1", ("dhc", 0): "new2"}  # dhc seed 1 no longer planned
    groups = classify(runs, old, new)
    assert groups == {"current": [("cps", 0)], "rekey": [("cps", 1)], "stale": [("dhc", 0), ("dhc", 1)]}


def test_differences_name_every_changed_field_and_nothing_else():
    a = {"final_loss": 0.5, "curve": [[2, 10.0], [4, 12.5]], "best_iteration": 4, "best_val_dice": 12.5,
         "summary": [{"class_index": 1, "dice_mean": 80.0}], "summary_last": [], "wall_s": 3.0}  # fmt: skip
    assert differences(a, {**a, "wall_s": 9.0}) == []  # timing is not behaviour
    b = {**a, "curve": [[2, 10.0], [4, 12.500001]], "summary": [{"class_index": 1, "dice_mean": 80.1}]}
    assert differences(a, b) == ["curve", "summary"]


def test_rekeyed_keeps_the_old_fingerprint_and_the_evidence():
    run = {"config": "cps", "seed": 1, "fingerprint": "old1", "summary": [1]}
    once = rekeyed(run, "new1", "aaa", "bbb", "identical")
    twice = rekeyed(once, "new2", "bbb", "ccc", "identical again")
    assert once["fingerprint"] == "new1" and run["fingerprint"] == "old1"  # input untouched
    assert [h["fingerprint"] for h in twice["rekeyed"]] == ["old1", "new1"]
    assert twice["rekeyed"][0] == {"fingerprint": "old1", "from_commit": "aaa", "to_commit": "bbb", "check": "identical"}
    assert twice["summary"] == [1]


def test_unknown_commit_is_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rebase_runs.py"), "--from", "no-such-commit",
                           "--results", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2
    assert "--from 'no-such-commit': not a commit of this repository" in proc.stderr
    assert "Traceback" not in proc.stderr
