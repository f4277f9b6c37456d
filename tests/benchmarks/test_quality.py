"""CI smoke test of ``benchmarks/quality.py --quick`` (the full budget never runs in CI).

One quick run trains the labeled-only baseline, CPS and CPS + SCDL through the real bundle
configs in subprocesses, plus an unknown method whose failure must appear as a table row with its
error instead of disappearing. ``scdl_probe.py`` reads the SCDL run back. Then the same results are reused from ``<out>/runs`` (stored
fingerprint matches: nothing retrained), and the same command runs on a hand-written datalist.
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
SCRIPT = str(ROOT / "benchmarks" / "quality.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", *args], capture_output=True, text=True, timeout=900, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _tables(md: str) -> dict[str, list[list[str]]]:
    """Markdown section title -> rows (cells) of its table."""
    out, title = {}, None
    for line in md.splitlines():
        if line.startswith("### "):
            title = line[4:].strip()
            out[title] = []
        elif line.startswith("| ") and title is not None and not line.startswith("|---"):
            out[title].append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


def test_quality_quick_reports_paired_tail_and_both_models_and_reuses_stored_runs(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    configs = ["supervised", "cps", "cps+scdl", "no_such_method"]
    _run("--seeds", "0", "--out", str(out), "--work-dir", str(work), "--configs", *configs)

    md = (out / "quality.md").read_text()
    assert "CPU-hours" in md
    tables = _tables(md)
    for model in ("Best-validation model", "Last-iteration model"):
        header, *rows = tables[model]
        assert header == ["Method", "Avg Dice", "Tail Dice", "Avg ASD (mm)", *ORGANS]
        by_label = {r[0]: r for r in rows}
        for label in ("Supervised (labeled only)", "CPS", "CPS + SCDL"):
            cells = by_label[label]
            dice = [float(c) for c in [cells[1], cells[2]] + cells[4:]]
            assert all(0.0 <= d <= 100.0 for d in dice)
        assert by_label["no_such_method"][1] == "FAILED"
    paired = next(v for k, v in tables.items() if k.startswith("Paired") and "best-validation" in k)
    assert paired[0][:3] == ["Method", "seeds", "Δ Avg Dice"]
    assert [r[0] for r in paired[1:]] == ["CPS + SCDL − CPS"]

    with open(out / "quality.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["model"], r["config"]) for r in table] == [(m, c) for m in ("best", "last") for c in configs]
    for organ in ORGANS:
        assert f"{organ} dice_mean" in table[0]
    errors = {r["config"]: r["error"] for r in table}
    assert "method must be one of" in errors["no_such_method"]
    for name in ("quality.png", "quality_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "quality.json").read_text())
    assert {(r["config"], r["status"]) for r in res["runs"]} == {
        ("supervised", "ok"), ("cps", "ok"), ("cps+scdl", "ok"), ("no_such_method", "error")}  # fmt: skip
    ok = [r for r in res["runs"] if r["status"] == "ok"]
    assert all(r["curve"] and r["curve"][-1][0] == r["iterations"] for r in ok)  # a validation point per run end
    stored = sorted(p.name for p in (out / "runs").iterdir())
    assert stored == ["cps+scdl_seed0.json", "cps_seed0.json", "supervised_seed0.json"]  # no file for the failure

    # scdl_probe.py reads the SCDL run back (train.json + overrides.json + the last model) and reports its branch
    probe = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scdl_probe.py"), str(work / "runs" / "cps+scdl_seed0"),
                            "--out", str(tmp_path / "probe")], capture_output=True, text=True, timeout=600, env=ENV)  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    (record,) = json.loads((tmp_path / "probe" / "scdl_probe.json").read_text())
    assert record["run"] == "cps+scdl_seed0" and set(record["networks"]) == {"networks.0", "networks.1"}
    for report in record["networks"].values():
        assert 0.0 <= report["token_accuracy"] <= 1.0 and 0.0 < report["majority_baseline"] <= 1.0
        assert len(report["class_recall"]) == len(ORGANS) + 1 and report["sigma_mean"] > 0
    assert all(0.0 <= record[k] <= 100.0 for k in ("test_dice_prior_on", "test_dice_prior_off", "test_dice_batch_stats"))
    assert "| cps+scdl_seed0 | networks.0 |" in probe.stdout
    plain = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scdl_probe.py"), str(work / "runs" / "cps_seed0"),
                            "--out", str(tmp_path / "probe_plain")], capture_output=True, text=True, timeout=600, env=ENV)  # fmt: skip
    assert plain.returncode == 0, plain.stderr[-3000:]
    (record,) = json.loads((tmp_path / "probe_plain" / "scdl_probe.json").read_text())
    assert record["networks"] == {} and "| cps_seed0 | (no SCDL) |" in plain.stdout
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scdl_probe.py"), str(work / "runs" / "nothing")],
                             capture_output=True, text=True, timeout=600, env=ENV)  # fmt: skip
    assert missing.returncode == 2 and "not a finished quality.py run folder" in missing.stderr

    # --reuse: the stored results match these settings, nothing is trained again
    proc = _run("--seeds", "0", "--out", str(out), "--work-dir", str(work), "--configs", "supervised", "cps", "--reuse")
    assert proc.stdout.count("[stored]") == 2, proc.stdout[-2000:]
    # --plan: the fingerprints a run would have, nothing run (benchmarks/rebase_runs.py relies on it)
    proc = _run("--seeds", "0", "--work-dir", str(work), "--configs", "supervised", "cps", "--plan")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("quality plan: "))
    planned = {p["config"]: p["fingerprint"] for p in json.loads(line[len("quality plan: "):])}
    assert planned == {c: json.loads((out / "runs" / f"{c}_seed0.json").read_text())["fingerprint"]
                       for c in ("supervised", "cps")}  # fmt: skip

    # the same command on a hand-written datalist (a second phantom seed, relative paths)
    from scdl_monai.data.phantom import generate_phantom

    datalist = generate_phantom(tmp_path / "other", num_cases=6, shape=(48, 48, 48), seed=7, num_validation=1,
                                num_test=1, relative=True)  # fmt: skip
    hand = json.loads(datalist.read_text())
    hand = {k: hand[k] for k in ("training", "unlabeled", "validation", "test")}
    for entry in hand["unlabeled"]:  # labels of the unlabeled cases: what the upper bound trains on
        entry["label"] = entry["image"].replace("images/", "labels/")
    (tmp_path / "other" / "mine.json").write_text(json.dumps(hand))
    out2 = tmp_path / "out2"
    _run("--seeds", "0", "--out", str(out2), "--datalist", str(tmp_path / "other" / "mine.json"),
         "--configs", "supervised", "fully_supervised", "--set", "dropout=0")  # fmt: skip
    res2 = json.loads((out2 / "quality.json").read_text())
    assert res2["extra_overrides"] == {"dropout": 0} and '"dropout": 0' in (out2 / "quality.md").read_text()
    assert res2["data"]["datalist"].endswith("mine.json")
    assert {r["config"]: r["status"] for r in res2["runs"]} == {"supervised": "ok", "fully_supervised": "ok"}


def test_fingerprint_is_of_the_effective_config():
    """An override and a default that say the same thing give the same fingerprint; paths do not count."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality

    spec = {"data_id": {"phantom": 1}, "size": {"val_every": 10}, "threads": 1}
    by_override = quality.fingerprint({"k": 1, "n": {"m": 2}}, {"k": 3, "bundle_root": "/a"}, spec)
    by_default = quality.fingerprint({"k": 3, "n": {"m": 2}}, {"bundle_root": "/b"}, spec)
    nested = quality.fingerprint({"k": 3, "n": {"m": 2}}, {"n#m": 5}, spec)
    assert by_override == by_default != nested
    assert quality.fingerprint({"k": 3, "n": {"m": 2}}, {}, {**spec, "threads": 2}) != by_default
    # the fully supervised variant differs from supervised only by its (unhashed) datalist path
    full = quality.all_labels_spec({**spec, "datalist": "/a/l.json", "datalist_full": "/a/full.json"})
    assert full["datalist"] == "/a/full.json"
    assert quality.fingerprint({"k": 3, "n": {"m": 2}}, {}, full) != by_default


def test_supervised_rows_train_in_the_reference_batch():
    """Phantom budget: supervised references 4 labeled patches per step, SSL methods 2 + 2."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality

    spec = {"size": quality.BUDGETS["phantom"], "budget": "phantom", "run_dir": "r", "dataset_dir": "d",
            "datalist": "l", "seed": 0, "device": "cpu", "precision": "bf16", "channels_last": True}  # fmt: skip
    sup = quality.overrides_for("supervised", False, spec, {})
    dhc = quality.overrides_for("dhc", False, spec, {})
    assert (sup["batch_size"], dhc["batch_size"], dhc["unlabeled_batch_size"]) == (4, 2, 2)
    quick = quality.overrides_for("supervised", False, {**spec, "size": quality.BUDGETS["quick"]}, {})
    assert quick["batch_size"] == quality.BUDGETS["quick"]["batch"]


def test_bad_datalist_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"training": []}))
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--datalist", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300, env=ENV)  # fmt: skip
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines == [f"error: {bad.resolve()}: datalist key 'training' is missing or empty "
                     "(needs training, unlabeled, validation, test)"]  # fmt: skip
    assert not (tmp_path / "o").exists()
