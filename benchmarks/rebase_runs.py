"""Carry stored quality runs across a refactor that changes the bundle configs but not what they do.

``benchmarks/quality.py --reuse`` takes a stored run only when its fingerprint (a hash of the
composed bundle config, the overrides, the data and the budget) matches today's. A refactor that
renames a ``_target_`` or addresses a handler by id instead of by list position changes every
fingerprint without changing a single number, and would throw away hours of CPU. This tool
re-keys such runs, and only after showing that the refactor did not change behaviour:

1. plan the stored runs' configurations at ``--from COMMIT`` (a temporary git worktree) and in
   this tree (``quality.py --plan``); a stored run whose fingerprint is neither the old nor the
   new one is left alone ("stale");
2. for every configuration to re-key, train and test it at a tiny budget (the same phantom,
   ``--check-iterations`` iterations, validation in between) with the old code and with this
   code, and compare the results: final loss, validation curve and every per-organ test metric
   must be identical, bit for bit;
3. only then write the new fingerprint into the stored run (atomically), keeping the old one in
   ``rekeyed`` with both commits and the check that allowed it.

Usage (repository root; ``--set`` as in quality.py, for runs made with extra overrides)::

    python benchmarks/rebase_runs.py --from ca7725b [--results benchmarks/results] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from quality import PLAN_MARKER, RESULTS  # noqa: E402

from scdl_monai.data.utils import atomic_write  # noqa: E402

#: Fields of a quality run that the behaviour check compares (everything the tables read).
COMPARED = ("final_loss", "curve", "best_iteration", "best_val_dice", "summary", "summary_last")


def stored_runs(results: Path) -> dict[tuple[str, int], tuple[Path, dict]]:
    """``(config, seed) -> (path, run)`` for every finished run under ``<results>/runs``."""
    runs = {}
    for path in sorted((results / "runs").glob("*_seed*.json")):
        run = json.loads(path.read_text())
        if run.get("status") == "ok":
            runs[(run["config"], int(run["seed"]))] = (path, run)
    return runs


def classify(runs: dict, old_plan: dict, new_plan: dict) -> dict[str, list[tuple[str, int]]]:
    """Split stored runs into ``current`` (new fingerprint), ``rekey`` (old one) and ``stale``."""
    groups: dict[str, list[tuple[str, int]]] = {"current": [], "rekey": [], "stale": []}
    for key, (_, run) in runs.items():
        fp = run.get("fingerprint")
        if fp is not None and fp == new_plan.get(key):
            groups["current"].append(key)
        elif fp is not None and fp == old_plan.get(key) and new_plan.get(key):
            groups["rekey"].append(key)
        else:
            groups["stale"].append(key)
    return groups


def differences(old: dict, new: dict) -> list[str]:
    """Names of the compared fields on which two runs of one configuration disagree."""
    return [k for k in COMPARED if json.dumps(old.get(k), sort_keys=True) != json.dumps(new.get(k), sort_keys=True)]


def rekeyed(run: dict, new_fp: str, old_commit: str, new_commit: str, check: str) -> dict:
    """``run`` with ``new_fp`` as its fingerprint and the old one recorded in ``rekeyed``."""
    history = list(run.get("rekeyed", []))
    history.append({"fingerprint": run["fingerprint"], "from_commit": old_commit, "to_commit": new_commit,
                    "check": check})  # fmt: skip
    return {**run, "fingerprint": new_fp, "rekeyed": history}


def _quality(tree: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, str(tree / "benchmarks" / "quality.py"), *args], cwd=tree, env=env,
                          capture_output=True, text=True)  # fmt: skip


def plan(tree: Path, configs: list[str], seeds: list[int], work: Path, extra: list[str]) -> dict:
    """``(config, seed) -> fingerprint`` as ``quality.py --plan`` in ``tree`` computes it."""
    proc = _quality(tree, ["--plan", "--configs", *configs, "--seeds", *map(str, seeds), "--work-dir", str(work), *extra])
    for line in proc.stdout.splitlines():
        if line.startswith(PLAN_MARKER):
            return {(p["config"], int(p["seed"])): p["fingerprint"] for p in json.loads(line[len(PLAN_MARKER):])}
    raise RuntimeError(f"quality.py --plan in {tree} printed no plan (exit {proc.returncode}): {proc.stderr[-2000:]}")


def tiny_runs(tree: Path, configs: list[str], iterations: int, work: Path, extra: list[str]) -> dict[str, dict]:
    """Train and test ``configs`` (seed 0) at ``iterations`` iterations in ``tree``; ``config -> run``."""
    out = work / "out"
    every = max(1, iterations // 2)
    proc = _quality(tree, ["--configs", *configs, "--seeds", "0", "--iterations", str(iterations), "--val-every",
                           str(every), "--jobs", "1", "--threads", "1", "--work-dir", str(work), "--out", str(out),
                           *extra])  # fmt: skip
    runs = {c: json.loads(p.read_text()) for c in configs if (p := out / "runs" / f"{c}_seed0.json").is_file()}
    missing = sorted(set(configs) - set(runs))
    if missing:
        raise RuntimeError(f"tiny runs failed in {tree} for {missing} (exit {proc.returncode}): {proc.stdout[-2000:]}")
    return runs


def _commit(tree: Path, rev: str = "HEAD") -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=tree, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="old", required=True, help="commit the stored runs' configs come from")
    parser.add_argument("--results", default=str(RESULTS), help="folder with runs/ (default: benchmarks/results)")
    parser.add_argument("--check-iterations", type=int, default=4, help="iterations of the behaviour check")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override the stored runs were made with (as in quality.py)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="classify and check, write nothing")
    args = parser.parse_args(argv)
    results = Path(args.results)
    if not (results / "runs").is_dir():
        parser.error(f"--results {results}: no runs/ folder")
    if args.check_iterations < 2:
        parser.error(f"--check-iterations must be >= 2, got {args.check_iterations}")
    try:
        old_commit = _commit(ROOT, args.old)
    except subprocess.CalledProcessError:
        parser.error(f"--from {args.old!r}: not a commit of this repository")
    new_commit = _commit(ROOT)
    extra = [a for o in args.overrides for a in ("--set", o)]
    runs = stored_runs(results)
    if not runs:
        print(f"no finished runs under {results / 'runs'}")
        return 0
    configs = sorted({c for c, _ in runs})
    seeds = sorted({s for _, s in runs})
    with tempfile.TemporaryDirectory(prefix="rebase_") as tmp:
        work, old_tree = Path(tmp), Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), old_commit], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            old_plan = plan(old_tree, configs, seeds, work / "plan_old", extra)
            new_plan = plan(ROOT, configs, seeds, work / "plan_new", extra)
            groups = classify(runs, old_plan, new_plan)
            print(f"{len(runs)} stored runs: {len(groups['current'])} current, {len(groups['rekey'])} from "
                  f"{old_commit}, {len(groups['stale'])} stale (left alone: {sorted(groups['stale'])})")  # fmt: skip
            todo = sorted({c for c, _ in groups["rekey"]})
            if not todo:
                return 0
            old_runs = tiny_runs(old_tree, todo, args.check_iterations, work / "tiny_old", extra)
            new_runs = tiny_runs(ROOT, todo, args.check_iterations, work / "tiny_new", extra)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
    check = (f"{args.check_iterations}-iteration phantom runs at {old_commit} and {new_commit}: "
             f"{', '.join(COMPARED)} identical")  # fmt: skip
    failed = 0
    for config in todo:
        diff = differences(old_runs[config], new_runs[config])
        keys = [k for k in groups["rekey"] if k[0] == config]
        if diff:
            failed += 1
            print(f"{config}: behaviour changed ({', '.join(diff)}); {len(keys)} run(s) NOT re-keyed")
            continue
        for key in keys:
            path, run = runs[key]
            if not args.dry_run:
                text = json.dumps(rekeyed(run, new_plan[key], old_commit, new_commit, check)) + "\n"
                atomic_write(path, lambda tmp, t=text: tmp.write_text(t))
        print(f"{config}: identical at {args.check_iterations} iterations; "
              f"{'would re-key' if args.dry_run else 're-keyed'} {len(keys)} run(s)")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
