"""Attribute VLM variants on the demo shards (data/shards; run `dvc repro shard` first): each trains
with params.yaml's vlm section plus overrides on `--train-rows` train rows and is scored on
`--test-rows` test rows (per-attribute accuracy, JSON validity before repair, seconds). Prints JSON.

    python bench/vlm.py --variant base --variant lr=0.005 --variant visual_tokens=8,epochs=4
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from catalog_search.attributes.labels import LabelSet
from catalog_search.params import load_params
from catalog_search.training.data import load_split
from catalog_search.vlm.extract import extract, vlm_metrics
from catalog_search.vlm.language import cache_dir
from catalog_search.vlm.train import build, fit, image_inputs, subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", action="append", default=[], help="base, or key=yaml overrides joined by ','")
    ap.add_argument("--train-rows", type=int, default=512)
    ap.add_argument("--test-rows", type=int, default=128)
    args = ap.parse_args()
    p, device = load_params()["vlm"], torch.device("cpu")
    train = subset(load_split(Path("data/shards"), "train"), args.train_rows, p["seed"])
    test = load_split(Path("data/shards"), "test")[: args.test_rows]
    labels = LabelSet.fit(train, {a: [] for a in p["attributes"]}, p["min_count"], "none")
    results = {}
    for variant in args.variant or ["base"]:
        overrides = {} if variant == "base" else dict(
            (k, yaml.safe_load(v)) for k, v in (item.split("=", 1) for item in variant.split(",")))
        cfg = {**p, **overrides}
        features = image_inputs(cfg, [r["image"] for r in train + test], cfg["extract_batch"], device)
        model, template, tokenizer = build(cfg, labels, features.shape[1], cache_dir(cfg["cache_dir"]))
        start = time.perf_counter()
        record = fit(model, template, labels, train, features[: len(train)], cfg, device)
        seconds = round(time.perf_counter() - start, 1)
        answers, repaired, per_s = extract(model, template, tokenizer, features[len(train):], cfg["extract_batch"], device)
        results[variant] = {**vlm_metrics(labels, test, answers, repaired), "train_seconds": seconds,
                            "steps": record["steps"], "last_loss": record["epochs"][-1]["loss"]}
    print(json.dumps({"train_rows": len(train), "test_rows": len(test), "variants": results}, indent=2))


if __name__ == "__main__":
    main()
