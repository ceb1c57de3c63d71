"""The attribute models on a whole catalog: `catalog-search run-attributes runs/<name>.yaml`.

In run-catalog's clone (`.runs/<name>/`: the same catalog, cleaning and split), with the run
file's `set` plus its `attributes.set`, one `dvc exp run evaluate_vlm`: the attribute classifier
(train_attributes, evaluate_attributes) and the VLM (train_vlm, evaluate_vlm) learn from the same
train split and are scored on the same test rows. Their accuracies side by side, the VLM's JSON
validity and speed, the params and the run's date and commit go to `results/<name>/attributes.{json,md}`."""
from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from catalog_search.io import read_json, write_json, write_text
from catalog_search.runs import _clone, _run, set_dotted


def run_attributes(run_file: Path, root: Path = Path(".")) -> dict:
    started = time.time()
    root, spec = root.resolve(), yaml.safe_load(run_file.read_text())
    name, section = spec["name"], spec["attributes"]
    work, log = root / ".runs" / name, root / ".runs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    commit = _clone(root, work, log)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for key, value in {**spec["set"], **section["set"]}.items():
        set_dotted(params, key, value)
    data_path = Path(params["data"]["path"])
    params["data"]["path"] = str(data_path if data_path.is_absolute() else (root / data_path).resolve())
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "commit", "-q", "--allow-empty", "-am", f"attributes {name}: params"], work, log)
    _run(["dvc", "exp", "run", "evaluate_vlm"], work, log)

    vlm, classifier = read_json(work / "metrics/vlm.json"), read_json(work / "metrics/attributes.json")
    out = {"test_rows": vlm["n_rows"],
           "accuracy": {a: {"classifier": classifier["attributes"][a]["accuracy"], "vlm": vlm["accuracy"][a],
                            "vlm_free": vlm["free"]["accuracy"][a], "vlm_untuned": vlm["zero_shot"]["accuracy"][a]}
                        for a in vlm["accuracy"]},
           "mean": {"classifier": round(sum(classifier["attributes"][a]["accuracy"] for a in vlm["accuracy"])
                                        / len(vlm["accuracy"]), 4), "vlm": vlm["mean_accuracy"]},
           "vlm": {"images_per_s": vlm["images_per_s"], "valid_json_raw": vlm["valid_json_raw"],
                   "free_rows": vlm["free"]["n_rows"], "train": read_json(work / "metrics/train_vlm.json")},
           "classifier_train": read_json(work / "metrics/train_attributes.json"),
           "set": section["set"],
           "run": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
                   "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
                   "wall_seconds": round(time.time() - started), "command": f"catalog-search run-attributes {run_file}"}}
    results = root / section["results"]
    write_json(results, out)
    write_text(results.with_suffix(".md"), markdown(out))
    print(f"run-attributes {name}: {results}")
    return out


def markdown(out: dict) -> str:
    rows = [f"| {a} | {v['classifier']:.3f} | {v['vlm']:.3f} | {v['vlm_free']:.3f} | {v['vlm_untuned']:.3f} |"
            for a, v in out["accuracy"].items()]
    vlm = out["vlm"]
    return "\n".join([
        f"Test split, {out['test_rows']} products (`{out['run']['command']}`, {out['run']['date']}, "
        f"commit {out['run']['commit'][:7]}, {out['run']['machine']}).", "",
        "| attribute | classifier | VLM (constrained) | VLM (free generation) | VLM untuned |", "|---|---|---|---|---|",
        *rows,
        f"| mean | {out['mean']['classifier']:.3f} | {out['mean']['vlm']:.3f} | | |", "",
        f"VLM extraction {vlm['images_per_s']} images/s; free generation valid JSON before repair "
        f"{vlm['valid_json_raw']:.3f} on {vlm['free_rows']} rows; VLM training {vlm['train']['train_seconds']} s, "
        f"classifier {out['classifier_train']['train_seconds']} s.", ""])
