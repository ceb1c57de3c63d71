"""Attribute classifier ablations on the demo shards (data/shards; run `dvc repro shard` first):

- lora          the default: LoRA backbone + hierarchical MLP heads
- flat          the same without hierarchy conditioning (every head sees the features alone)
- frozen        the same heads on the frozen backbone
- linear_probe  a linear head per attribute on the frozen backbone, no hierarchy
- full          every backbone weight trains (the memory and parameter reference)

Each variant trains with params.yaml's attributes section in a fresh process (so its peak
memory is its own) and is scored on the test split. Prints JSON: per-variant test metrics,
trainable parameters, training memory (peak minus just before training: CUDA allocator on a
GPU, resident set on a CPU) and seconds; then the comparisons the issue asks for.

    python bench/attributes.py [--variants lora flat ...] [--seeds 0 1] [--set head_hidden=64 ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

VARIANTS = {
    "lora": {},
    "flat": {"hierarchy": False},
    "frozen": {"mode": "frozen"},
    "linear_probe": {"mode": "frozen", "head_hidden": 0, "hierarchy": False},
    "full": {"mode": "full", "lr": 5e-4},
}


def one_variant(overrides: dict) -> dict:
    import torch

    from catalog_search.attributes.evaluate import attribute_metrics
    from catalog_search.attributes.train import predict_probs, train_classifier
    from catalog_search.config import AttributesParams, load_config
    from catalog_search.core.data import load_split
    from catalog_search.core.device import pick_device

    cfg = AttributesParams.model_validate({**load_config().attributes.model_dump(), **overrides}).model_dump()
    shards = Path("data/shards")
    train, val, test = (load_split(shards, s) for s in ("train", "val", "test"))
    device = pick_device()
    model, _, labels, record = train_classifier(cfg, train, val, device)
    probs = predict_probs(model, [r["image"] for r in test], cfg["batch_size"], device, cfg["workers"])
    metrics = attribute_metrics(labels, test, probs)
    record.pop("epochs")
    record["train_memory_mb"] = round(record["peak_memory_mb"] - record["memory_before_train_mb"], 1)
    return {"test": metrics, "run": record, "device": str(device), "overrides": overrides}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=YAML",
                    help="override attributes.KEY in every variant, e.g. --set head_hidden=64 epochs=6")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: the JSON overrides of one child run
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_variant(json.loads(args.one))))
        return
    common = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    runs: dict[str, list[dict]] = {}
    for name in args.variants:
        for seed in args.seeds:
            overrides = {**common, **VARIANTS[name], "seed": seed}  # a variant keeps what defines it
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps(overrides)], capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"{name} seed {seed} failed:\n{out.stderr[-3000:]}")
            runs.setdefault(name, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{name} seed {seed}: mean accuracy {runs[name][-1]['test']['mean_accuracy']}", file=sys.stderr)
    print(json.dumps({"set": common, "variants": {n: summarise(r) for n, r in runs.items()}, "compare": compare(runs)},
                     indent=1))


def mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4)


def summarise(runs: list[dict]) -> dict:
    attrs = runs[0]["test"]["attributes"]
    return {"seeds": len(runs),
            "accuracy": {a: mean([r["test"]["attributes"][a]["accuracy"] for r in runs]) for a in attrs},
            "macro_f1": {a: mean([r["test"]["attributes"][a]["macro_f1"] for r in runs]) for a in attrs},
            "mean_accuracy": mean([r["test"]["mean_accuracy"] for r in runs]),
            "mean_accuracy_per_seed": [r["test"]["mean_accuracy"] for r in runs],
            "hierarchy_consistency": mean([r["test"]["hierarchy_consistency"] for r in runs]),
            "consistency": {e: mean([r["test"]["consistency"][e] for r in runs]) for e in runs[0]["test"]["consistency"]},
            **{k: runs[0]["run"][k] for k in ("trainable_params", "lora_params", "head_params", "backbone_params")},
            "train_memory_mb": mean([r["run"]["train_memory_mb"] for r in runs]),
            "train_seconds": mean([r["run"]["train_seconds"] for r in runs]), "device": runs[0]["device"]}


def compare(runs: dict[str, list[dict]]) -> dict:
    s = {n: summarise(r) for n, r in runs.items()}
    out = {}
    for base in ("linear_probe", "frozen", "flat"):
        if "lora" in s and base in s:
            out[f"lora_minus_{base}"] = {
                "accuracy": {a: round(s["lora"]["accuracy"][a] - s[base]["accuracy"][a], 4) for a in s["lora"]["accuracy"]},
                "mean_accuracy": round(s["lora"]["mean_accuracy"] - s[base]["mean_accuracy"], 4),
                "hierarchy_consistency": round(s["lora"]["hierarchy_consistency"] - s[base]["hierarchy_consistency"], 4)}
    if "lora" in s and "full" in s:
        out["lora_over_full"] = {"trainable_params": round(s["lora"]["trainable_params"] / s["full"]["trainable_params"], 4),
                                 "train_memory": round(s["lora"]["train_memory_mb"] / s["full"]["train_memory_mb"], 3),
                                 "train_seconds": round(s["lora"]["train_seconds"] / s["full"]["train_seconds"], 3)}
    return out


if __name__ == "__main__":
    main()
