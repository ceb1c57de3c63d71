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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from catalog_search.config import TrainConfig, load_config
from catalog_search.core.device import pick_device
from catalog_search.models.lora import apply_scenario
from catalog_search.models.registry import ModelBundle, create_model
from catalog_search.models.scenarios import SCENARIOS
from catalog_search.params import deep_merge

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORDS = "red blue black white green dress shirt coat sofa chair lamp striped floral plain wool cotton".split()
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


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
    apply_scenario(bundle.model, SCENARIOS[scenario], {**train_cfg()["lora"], "dropout": args.lora_dropout})
    bundle.model.to(device)
    return bundle, device


def train_cfg(**overrides) -> dict:
    """params.yaml's train.defaults with the benches' settings (one epoch of batch 32 at a fixed lr,
    LoRA in every block, no checkpoints) and `overrides`, checked by the model train@ uses."""
    defaults = load_config(PARAMS).train.defaults.model_dump()
    bench = {"epochs": 1, "batch_size": 32, "lr": 1e-4, "warmup_fraction": 0.0, "checkpoint_every": 10**9,
             "max_steps": None, "eval_every": 0, "hard_negatives": {"share": 0.0},
             "lora": {"image_last_blocks": None, "text_last_blocks": None}}
    return TrainConfig.model_validate(deep_merge(deep_merge(defaults, bench), overrides)).model_dump()
