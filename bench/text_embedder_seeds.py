"""Tuned vs base text embedder over several seeds: is the gain larger than the seed-to-seed spread?

    python bench/text_embedder_seeds.py [--lr 2e-4] [--seeds 0 1 2]     (after `dvc repro shard`)

Prints JSON: base metrics, per-seed tuned metrics, mean and spread (max - min) of MRR@10.
"""
import argparse
import json
from pathlib import Path
from statistics import mean

from catalog_search.config import TextEmbedderParams, load_config
from catalog_search.core.data import load_split
from catalog_search.text_embedder import load_model
from catalog_search.text_embedder.train import evaluate, train

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    p = load_config().text_embedder
    p = TextEmbedderParams.model_validate({**p.model_dump(), "lr": args.lr or p.lr}).model_dump()
    train_split, test = load_split(Path("data/shards"), "train"), load_split(Path("data/shards"), "test")
    base = evaluate(load_model(p["base"], max_length=p["max_length"]), test)
    tuned = {}
    for seed in args.seeds:
        model = load_model(p["base"], max_length=p["max_length"])
        stats = train(model, train_split, p, seed=seed)
        tuned[seed] = {**evaluate(model, test), "train_seconds": stats["train_seconds"]}
    mrr = [t["MRR@10"] for t in tuned.values()]
    print(json.dumps({"lr": p["lr"], "base": base, "tuned": tuned, "tuned_MRR@10_mean": round(mean(mrr), 4),
                      "tuned_MRR@10_spread": round(max(mrr) - min(mrr), 4),
                      "gain_MRR@10_mean": round(mean(mrr) - base["MRR@10"], 4)}, indent=1))
