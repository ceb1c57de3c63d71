"""A whole-catalog run with a fair tuning budget: `catalog-search run-catalog runs/<name>.yaml`.

The graph runs in a clone of this repository's HEAD (`.runs/<name>/`, so the project's own
dvc.lock and metrics stay the demo's), with the run file's params overrides. Every trained
scenario gets the same budget: one `dvc exp run` per point of the sweep grid (all trained
scenarios at that learning rate, the best validated epoch of `sweep.epochs` kept), the point
with the best validation score wins per scenario; the test split is read only for reporting.
The two best scenarios are then re-trained with more seeds for the seed-to-seed spread. The
report of the chosen points, the params, the sweep table, the date, machine and wall time go to
`results/<name>/` (committed); the catalog itself never leaves where it is.

Re-running resumes: each grid point's results are stashed as it finishes and skipped after.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from catalog_search.io import read_json, write_json, write_text
from catalog_search.models.scenarios import get_scenario
from catalog_search.params import ParamsError

STASHED = ["metrics/eval/{s}.json", "metrics/train/{s}.json", "data/eval/{s}.npz", "reports/recall_at_k/{s}.json",
           "data/embeddings/{s}"]
SPREAD = ["title_to_image_R@10", "text_to_image_R@10", "attribute_P@10", "sampled100_text_to_image_R@1"]


def set_dotted(params: dict, key: str, value) -> None:
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"run file: set.{key}: params.yaml has no section {part!r} there")
        node = node[part]
    node[leaf] = value


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(cwd / "src"), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "GIT_AUTHOR_NAME": "catalog-search", "GIT_AUTHOR_EMAIL": "run@catalog-search",
           "GIT_COMMITTER_NAME": "catalog-search", "GIT_COMMITTER_EMAIL": "run@catalog-search"}
    print(f"[{datetime.now():%H:%M:%S}] {' '.join(cmd)}", flush=True)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        if subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"run-catalog: `{' '.join(cmd)}` failed in {cwd}; its output is in {log}. Fix it and re-run: "
                     "finished grid points are kept.")


def head_commit(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def _clone(root: Path, work: Path, log: Path) -> str:
    """A clone of HEAD (the committed code: what the results say they ran)."""
    head = head_commit(root)
    if not (work / ".git").exists():
        work.parent.mkdir(parents=True, exist_ok=True)
        _run(["git", "clone", "-q", str(root), str(work)], root, log)
    # the lock and the uncached metrics of the outputs already in the clone: a checkout of new code
    # must not put the repository's own (demo) versions over them; DVC re-runs what the code touches
    kept = {p: p.read_bytes() for p in [work / "dvc.lock", *(work / "metrics").rglob("*.json")] if p.is_file()}
    _run(["git", "fetch", "-q", str(root), head], work, log)
    _run(["git", "checkout", "-q", "-f", head], work, log)
    for path, content in kept.items():
        path.write_bytes(content)
    return head


def _stash(work: Path, stash: Path, scenarios: list[str]) -> None:
    tmp = stash.with_name(stash.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for s in scenarios:
        for pattern in STASHED:
            src, dst = work / pattern.format(s=s), tmp / pattern.format(s=s)
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    tmp.rename(stash)


def _restore(stash: Path, work: Path, s: str) -> None:
    for pattern in STASHED:
        src, dst = stash / pattern.format(s=s), work / pattern.format(s=s)
        if dst.is_dir():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def run_catalog(run_file: Path, root: Path = Path(".")) -> dict:
    started = time.time()
    root, spec = root.resolve(), yaml.safe_load(run_file.read_text())
    name, sweep = spec["name"], spec["sweep"]
    work, stashes = root / ".runs" / name, root / ".runs" / f"{name}.stash"
    results = root / spec["results"]
    log = root / ".runs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    commit = _clone(root, work, log)
    elapsed = stashes / "elapsed_seconds"  # wall time of earlier invocations of this run (a resume adds to it)
    before = float(elapsed.read_text()) if elapsed.exists() else 0.0

    def checkpoint_time() -> None:
        write_text(elapsed, f"{before + time.time() - started:.0f}\n")

    params = yaml.safe_load((work / "params.yaml").read_text())
    for key, value in spec["set"].items():
        set_dotted(params, key, value)
    recorded = json.loads(json.dumps(params))  # the params as the run file gives them (relative data path)
    data_path = Path(params["data"]["path"])
    if not data_path.is_absolute():
        params["data"]["path"] = str((root / data_path).resolve())
    if not Path(params["data"]["path"]).exists():
        sys.exit(f"run-catalog: data.path {params['data']['path']} does not exist; {run_file} names it (set.data.path)")
    scenarios = params["train"]["scenarios"]
    trained = [s for s in scenarios if get_scenario(s).trains]
    epochs = {"epochs": sweep["epochs"]} if sweep.get("epochs") else {}  # null: each scenario's own epochs
    for s in trained:
        params["train"][s] = {**(params["train"].get(s) or {}), **epochs}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "commit", "-q", "--allow-empty", "-am", f"run {name}: params"], work, log)

    grid = {}
    for lr in sweep["lr"]:
        point = stashes / f"lr{lr:g}"
        if not point.exists():
            sets = [f"++train.{s}.lr={lr}" for s in trained]
            _run(["dvc", "exp", "run", *[a for x in sets for a in ("-S", x)], spec.get("target", "report")], work, log)
            _stash(work, point, scenarios)
            checkpoint_time()
        grid[lr] = {s: read_json(point / f"metrics/train/{s}.json") for s in trained}
    metric = sweep["metric"]
    chosen = {s: max(sweep["lr"], key=lambda lr: grid[lr][s][metric]) for s in trained}
    base = stashes / f"lr{sweep['lr'][0]:g}"

    best = sorted(trained, key=lambda s: grid[chosen[s]][s][metric], reverse=True)[:spec["seed_scenarios"]]
    spread = {s: {0: read_json(stashes / f"lr{chosen[s]:g}" / f"metrics/eval/{s}.json")} for s in best}
    for seed in spec["seeds"]:
        point = stashes / f"seed{seed}"
        if not point.exists():
            sets = [x for s in best for x in (f"++train.{s}.lr={chosen[s]}", f"++train.{s}.seed={seed}")]
            _run(["dvc", "exp", "run", *[a for x in sets for a in ("-S", x)], spec.get("target", "report")], work, log)
            _stash(work, point, best)
            checkpoint_time()
        for s in best:
            spread[s][seed] = read_json(point / f"metrics/eval/{s}.json")

    for s in scenarios:  # the report of the chosen points: each scenario's stashed outputs back in place
        _restore(stashes / f"lr{chosen[s]:g}" if s in chosen else base, work, s)
        if s in chosen:
            params["train"][s]["lr"] = chosen[s]
            recorded["train"][s] = {**(recorded["train"].get(s) or {}), "lr": chosen[s]}
    recorded["train"].update({s: {**(recorded["train"].get(s) or {}), **epochs} for s in trained})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([sys.executable, "stages/report.py"], work, log)

    results.mkdir(parents=True, exist_ok=True)
    summary = read_json(work / "metrics/summary.json")
    summary["tuning"] = {"grid": {"lr": sweep["lr"], "epochs": f"best validated epoch of {sweep['epochs']}"
                                  if epochs else "each scenario's own (train.<scenario>.epochs), best validated epoch"},
                         "chosen_on": metric.replace("val_", "val split "), "chosen_lr": chosen,
                         "val": {f"{lr:g}": {s: grid[lr][s][metric] for s in trained} for lr in sweep["lr"]}}
    summary["seed_spread"] = {s: {m: {"seeds": {str(k): v[m] for k, v in runs.items()},
                                      "mean": round(float(np.mean([v[m] for v in runs.values()])), 4),
                                      "std": round(float(np.std([v[m] for v in runs.values()], ddof=1)), 4)}
                                  for m in SPREAD} for s, runs in spread.items()}
    summary["run"] = {"name": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "commit": commit, "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                      f"{platform.system()}", "wall_seconds": round(before + time.time() - started),
                      "command": f"catalog-search run-catalog {run_file}"}
    write_json(results / "summary.json", summary)
    write_text(results / "params.yaml", yaml.safe_dump(recorded, sort_keys=False))
    md = (work / "reports/summary.md").read_text()
    write_text(results / "summary.md", md + _tuning_md(summary))
    for picture in ("top5.png", "recall_at_k.png"):
        shutil.copy2(work / "reports" / picture, results / picture)
    print(f"run-catalog {name}: results in {results} ({summary['run']['wall_seconds']} s)")
    return summary


def _tuning_md(summary: dict) -> str:
    t = summary["tuning"]
    lines = ["", "## Tuning budget (the same for every trained scenario)", "",
                                   f"Grid: lr {t['grid']['lr']}, epochs: {t['grid']['epochs']}; chosen on "
                                   f"{t['chosen_on']} (never test).", "", "| lr | " + " | ".join(t["chosen_lr"]) + " |",
                                   "|---" * (len(t["chosen_lr"]) + 1) + "|"]
    for lr, row in t["val"].items():
        lines.append(f"| {lr} | " + " | ".join(f"{'**' if t['chosen_lr'][s] == float(lr) else ''}{v:.3f}"
                                              f"{'**' if t['chosen_lr'][s] == float(lr) else ''}" for s, v in row.items()) + " |")
    lines += ["", "## Seed-to-seed spread (test, chosen lr)", "", "| scenario | metric | seeds | mean ± sd |", "|---|---|---|---|"]
    for s, metrics in summary["seed_spread"].items():
        for m, v in metrics.items():
            lines.append(f"| {s} | {m} | {', '.join(f'{x:.3f}' for x in v['seeds'].values())} | {v['mean']:.3f} ± {v['std']:.3f} |")
    r = summary["run"]
    return "\n".join(lines + ["", f"Run: {r['date']}, {r['machine']}, {r['wall_seconds'] / 60:.0f} min wall, "
                                  f"commit {r['commit'][:10]}; `{r['command']}`.", ""])
