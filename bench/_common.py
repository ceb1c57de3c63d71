"""Shared set-up of the training benches: a model with a scenario applied, synthetic samples.

Samples are smooth random-coloured JPEGs (an 8x8 colour grid upscaled, like the flat regions of
a product photo; pixel noise would make JPEG decoding several times slower than real photos)
with short captions, encoded like shard samples, so the pipeline's decode/preprocess/tokenise
path is part of what is measured. Runs on CPU (project
default model) and on a GPU (`--model ViT-B-32 --pretrained none --image-size 224`).
"""
from __future__ import annotations

import argparse
import io
import os

import numpy as np
import torch
from PIL import Image

from catalog_search.core.device import pick_device
from catalog_search.models.lora import apply_scenario
from catalog_search.models.registry import ModelBundle, create_model
from catalog_search.models.scenarios import SCENARIOS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORDS = "red blue black white green dress shirt coat sofa chair lamp striped floral plain wool cotton".split()
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "image_last_blocks": None, "text_last_blocks": None}


def parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--model", default="minilm-efficientnet-lite0")
    ap.add_argument("--pretrained", default="packaged")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    return ap


def samples(n: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        grid = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        buf = io.BytesIO()
        grid.resize((size, size), Image.BICUBIC).save(buf, "JPEG", quality=90)
        caption = " ".join(rng.choice(WORDS, 4))
        out.append({"key": str(i), "image": buf.getvalue(), "captions": [caption, f"a photo of a {caption}"]})
    return out


def build(args, scenario: str, loss: str = "infonce") -> tuple[ModelBundle, torch.device]:
    device = pick_device()
    torch.manual_seed(0)
    bundle = create_model(args.model, args.pretrained, image_size=args.image_size, loss=loss, device=device)
    apply_scenario(bundle.model, SCENARIOS[scenario], {**LORA, "dropout": args.lora_dropout})
    bundle.model.to(device)
    return bundle, device


def train_cfg(**overrides) -> dict:
    cfg = {"loss": "infonce", "epochs": 1, "batch_size": 32, "micro_batch_size": None, "lr": 1e-4,
           "weight_decay": 0.1, "warmup_fraction": 0.0, "grad_clip": 1.0, "seed": 0, "max_steps": None,
           "eval_every": 0, "early_stopping": {"metric": "text_to_image_R@10", "patience": 0, "min_delta": 0.0},
           "checkpoint_every": 10**9, "precision": "auto", "feature_cache": True, "workers": 0, "nproc": 1,
           "positives": "pair", "hard_negatives": {"share": 0.0, "ranks": [10, 100], "cluster": 4}, "lora": LORA}
    return {**cfg, **overrides}
