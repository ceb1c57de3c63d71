"""Recipes against the plain one on a real catalog: `catalog-search run-recipes runs/<name>.yaml`.

Each variant of the run file's `recipes` section (a set of `train.<scenario>` overrides: the
levers) is trained with every seed in the clone `run-catalog` uses (`.runs/<name>/`, its data
stages shared), one `dvc exp run` per (variant, seed), at the learning rate and epochs the sweep
chose. Every run sets every lever key, so nothing leaks from one variant into the next. Each
variant is compared with the plain recipe on the same test queries: per-query scores averaged
over seeds, then the paired bootstrap interval and sign-flip p of the report; "beyond noise" as
there. The seed-to-seed spread and, for the variants named in `wise_ft`, WiSE-FT's alpha curve
are added. Written to the run file's `recipes.results` (committed); re-running resumes.
"""
from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from catalog_search.io import read_json, write_json, write_text
from catalog_search.report import NOISE_P, beyond_noise, paired, per_query
from catalog_search.runs import _clone, _run, head_commit, set_dotted

METRICS = ["title_to_image_R@1", "title_to_image_R@10", "attribute_P@1", "attribute_P@10", "title_to_image_mrr"]
STASHED = ["metrics/eval/{s}.json", "metrics/train/{s}.json", "data/eval/{s}.npz"]
WISE_FT = "metrics/wise_ft/{s}.json"  # only from a run that asked for it: the workspace keeps an older one


def _get(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params[part]
    return params


def _stash(work: Path, point: Path, s: str, wise_ft: bool) -> None:
    tmp = point.with_name(point.name + ".partial")
    for pattern in STASHED + ([WISE_FT] if wise_ft else []):
        (tmp / pattern.format(s=s)).parent.mkdir(parents=True, exist_ok=True)
        (tmp / pattern.format(s=s)).write_bytes((work / pattern.format(s=s)).read_bytes())
    tmp.rename(point)


def compare(variant: list[dict], plain: list[dict], n: int, seed: int) -> dict:
    """Paired differences on the same queries, per-query scores averaged over seeds first."""
    out = {}
    for m in METRICS:
        a = np.mean([per_query(s, m) for s in variant], axis=0)
        b = np.mean([per_query(s, m) for s in plain], axis=0)
        out[m] = paired(a, b, n, seed)
    return out


def run_recipes(run_file: Path, root: Path = Path("."), train: bool = True) -> dict:
    """Run what is missing (`train`), then assemble the results of every finished (variant, seed)."""
    started = time.time()
    root, spec = root.resolve(), yaml.safe_load(run_file.read_text())
    name, r = spec["name"], spec["recipes"]
    s, work = r["scenario"], root / ".runs" / name
    stashes, log = root / ".runs" / f"{name}.recipes", root / ".runs" / f"{name}.log"
    stashes.mkdir(parents=True, exist_ok=True)
    commit = _clone(root, work, log) if train else head_commit(root)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for key, value in {**spec["set"], "train.scenarios": ["zero_shot", s], "wise_ft.scenarios": [s]}.items():
        set_dotted(params, key, value)
    data_path = Path(params["data"]["path"])
    params["data"]["path"] = str(data_path if data_path.is_absolute() else (root / data_path).resolve())
    params["train"][s] = {**(params["train"].get(s) or {}), "epochs": spec["sweep"]["epochs"], "lr": r["lr"]}
    if train:
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _run(["git", "commit", "-q", "--allow-empty", "-am", f"recipes {name}: params"], work, log)

    base = {**params["train"]["defaults"], **params["train"][s]}
    levers = sorted({k for v in r["variants"].values() for k in v})  # every run sets all of them
    for variant, overrides in r["variants"].items():
        for seed in r["seeds"]:
            point = stashes / f"{variant}-seed{seed}"
            if point.exists() or not train:
                continue
            values = {k: overrides.get(k, _get(base, k)) for k in levers}
            sets = [f"++train.{s}.seed={seed}", *(f"++train.{s}.{k}={json.dumps(v)}" for k, v in values.items())]
            wise_ft = variant in r.get("wise_ft", []) and seed == r["seeds"][0]
            targets = [f"evaluate@{s}", *([f"wise_ft@{s}"] if wise_ft else [])]
            _run(["dvc", "exp", "run", *[a for x in sets for a in ("-S", x)], *targets], work, log)
            _stash(work, point, s, wise_ft)

    def seeds(variant: str) -> list[int]:
        return [k for k in r["seeds"] if (stashes / f"{variant}-seed{k}").is_dir()]

    def load(variant: str, what: str) -> list:
        pattern = {"npz": f"data/eval/{s}.npz", "eval": f"metrics/eval/{s}.json", "train": f"metrics/train/{s}.json"}[what]
        paths = [stashes / f"{variant}-seed{k}" / pattern for k in seeds(variant)]
        return [dict(np.load(p)) if what == "npz" else read_json(p) for p in paths]

    n, boot_seed = params["evaluate"]["bootstrap"], params["evaluate"]["seed"]
    plain = load("plain", "npz")
    out = {"scenario": s, "lr": r["lr"], "epochs": spec["sweep"]["epochs"], "seeds": r["seeds"],
           "variants": {}, "wise_ft": {}}
    for variant, overrides in r["variants"].items():
        evals, trains = load(variant, "eval"), load(variant, "train")
        if not evals:
            continue
        row = {"overrides": overrides, "seeds": seeds(variant),
               "test": {m: {"mean": round(float(np.mean([e[m] for e in evals])), 4),
                            "seeds": [e[m] for e in evals],
                            "sd": round(float(np.std([e[m] for e in evals], ddof=1)), 4) if len(evals) > 1 else None}
                        for m in METRICS},
               "train_seconds": round(float(min(t["train_seconds"] for t in trains)), 1)}  # the least disturbed run
        if variant != "plain" and plain:
            row["vs_plain"] = compare(load(variant, "npz"), plain, n, boot_seed)
        out["variants"][variant] = row
        curve = stashes / f"{variant}-seed{r['seeds'][0]}" / f"metrics/wise_ft/{s}.json"
        if curve.exists():
            out["wise_ft"][variant] = read_json(curve)
    out["run"] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
                  "wall_seconds_this_invocation": round(time.time() - started),
                  "command": f"catalog-search run-recipes {run_file}",
                  "paired": "per-query scores averaged over seeds, then a paired bootstrap over the test queries "
                            f"({n} resamples) and a sign-flip permutation p; beyond noise: p < {NOISE_P} and the 95% "
                            "interval excludes 0"}
    write_json(root / r["results"], out)
    write_text((root / r["results"]).with_suffix(".md"), markdown(out))
    print(f"run-recipes {name}: {root / r['results']}")
    return out


def _cell(d: dict) -> str:
    bold = "**" if beyond_noise(d) else ""
    return f"{bold}{d['diff']:+.3f}{bold} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def markdown(out: dict) -> str:
    """The recipes table (mean over seeds ± sd; paired difference with plain) and WiSE-FT's curves."""
    shown = ["title_to_image_R@1", "title_to_image_R@10", "attribute_P@1", "attribute_P@10"]
    short = {"title_to_image_R@1": "title→img R@1", "title_to_image_R@10": "title→img R@10",
             "attribute_P@1": "attr P@1", "attribute_P@10": "attr P@10", "generic_to_image_R@10": "generic→img R@10"}
    lines = [f"# Recipes: {out['scenario']}, lr {out['lr']:g}, {out['epochs']} epochs, seeds {out['seeds']}", "",
             "| recipe | seeds | " + " | ".join(short[m] for m in shown) + " | Δ title→img R@10 vs plain | Δ attr P@10 vs "
             "plain | train s (fastest seed) |", "|---" * (len(shown) + 5) + "|"]
    for v, row in out["variants"].items():
        cells = [f"{row['test'][m]['mean']:.3f}" + (f" ± {row['test'][m]['sd']:.3f}" if row["test"][m]["sd"] is not None
                                                    else "") for m in shown]
        diffs = [_cell(row["vs_plain"][m]) if "vs_plain" in row else "–" for m in ("title_to_image_R@10", "attribute_P@10")]
        lines.append(f"| {v} | {', '.join(map(str, row['seeds']))} | " + " | ".join(cells + diffs)
                     + f" | {row['train_seconds']:.0f} |")
    lines += ["", "Mean over seeds ± sd (seed spread). Δ: " + out["run"]["paired"] + "; **bold**: beyond noise.", ""]
    for v, w in out["wise_ft"].items():
        keys = ["title_to_image_R@1", "title_to_image_R@10", "attribute_P@10", "generic_to_image_R@10"]
        lines += [f"## WiSE-FT of {v} (seed {out['seeds'][0]}): alpha 0 = zero_shot, 1 = tuned", "",
                  "| alpha | " + " | ".join(short[k] for k in keys) + " | Δ title→img R@10 vs alpha 1 |",
                  "|---" * (len(keys) + 2) + "|"]
        for point in w["curve"]:
            d = w["vs_tuned"].get(str(point["alpha"]), {}).get("title_to_image_R@10")
            lines.append(f"| {point['alpha']:g} | " + " | ".join(f"{point[k]:.3f}" for k in keys) + " | "
                         + (_cell(d) if d else "–") + " |")
        lines.append("")
    return "\n".join(lines)
