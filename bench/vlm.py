"""Attribute VLM variants on the demo shards (data/shards; run `dvc repro shard` first): each trains
with params.yaml's vlm section plus overrides on `--train-rows` train rows and is scored on
`--test-rows` test rows (per-attribute accuracy, JSON validity before repair, seconds). Prints JSON.

    python bench/vlm.py --variant base --variant lr=0.005 --variant layers=4,train_rows=512
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from catalog_search.config import VlmParams, load_config
from catalog_search.core.data import load_split
from catalog_search.core.labels import LabelSet
from catalog_search.vlm.build import build
from catalog_search.vlm.extract import extract, vlm_metrics
from catalog_search.vlm.language import cache_dir
from catalog_search.vlm.train import fit, image_inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", action="append", default=[], help="base, or key=yaml overrides joined by ','")
    ap.add_argument("--test-rows", type=int, default=128)
    args = ap.parse_args()
    p, device = load_config().vlm.model_dump(), torch.device("cpu")
    train = load_split(Path("data/shards"), "train")
    test = load_split(Path("data/shards"), "test")[: args.test_rows]
    labels = LabelSet.fit(train, {a: [] for a in p["attributes"]}, p["min_count"], "none")
    results = {}
    for variant in args.variant or ["base"]:
        overrides = {} if variant == "base" else dict(
            (k, yaml.safe_load(v)) for k, v in (item.split("=", 1) for item in variant.split(",")))
        cfg = VlmParams.model_validate({**p, **overrides}).model_dump()
        features = image_inputs(cfg, [r["image"] for r in train + test], cfg["extract_batch"], device)
        torch.manual_seed(cfg["seed"])
        model, template, tokenizer = build(cfg, labels, features.shape[1], cache_dir(cfg["cache_dir"]))
        start = time.perf_counter()
        record = fit(model, template, labels, train, features[: len(train)], cfg, device)
        seconds = round(time.perf_counter() - start, 1)
        test_inputs = features[len(train):]
        start = time.perf_counter()
        answers, _ = extract(model, template, tokenizer, test_inputs, cfg["extract_batch"], device)
        constrained_per_s = len(test) / (time.perf_counter() - start)
        start = time.perf_counter()
        free = vlm_metrics(labels, test, *extract(model, template, tokenizer, test_inputs, cfg["extract_batch"], device,
                                                  free=True))
        with torch.no_grad():  # the projector's tag heads alone: the visual tokens' argmax
            tags = model.eval().tags(test_inputs)
        tagged = [{a: template.values[a][int(tags[a][i].argmax())] for a in tags} for i in range(len(test))]
        results[variant] = {**vlm_metrics(labels, test, answers), "train_seconds": seconds,
                            "tags": vlm_metrics(labels, test, tagged)["accuracy"],
                            "constrained_images_per_s": round(constrained_per_s, 1),
                            "free": {**free, "images_per_s": round(len(test) / (time.perf_counter() - start), 1)},
                            "loss": record["epochs"]}
    print(json.dumps({"train_rows": len(train), "test_rows": len(test), "variants": results}, indent=2))


if __name__ == "__main__":
    main()
