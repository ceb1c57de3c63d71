"""Training and extraction loops of the attribute VLM (features precomputed: the backbone is frozen)."""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from catalog_search.attributes.backbone import build_backbone
from catalog_search.attributes.labels import LabelSet, known
from catalog_search.attributes.train import ImageRows, image_transform, loader
from catalog_search.vlm.language import load_language_model, load_tokenizer
from catalog_search.vlm.model import AttributeVLM, add_lora, prompt_ids, template_for
from catalog_search.vlm.template import IGNORE, JsonTemplate


def image_inputs(cfg: dict, images: Sequence[bytes], batch_size: int, device: torch.device) -> torch.Tensor:
    """Per-image model inputs: the frozen backbone's features (offline path, computed once) or the
    HF model's pixel values (`language: hf:...`)."""
    if cfg["language"].startswith("hf:"):
        from catalog_search.vlm.hf import pixel_values

        return pixel_values(cfg["language"][3:], list(images), batch_size)
    return image_features(cfg["backbone"], cfg["image_size"], images, batch_size, device)


@torch.no_grad()
def image_features(backbone_name: str, image_size: int, images: Sequence[bytes], batch_size: int,
                   device: torch.device) -> torch.Tensor:
    backbone = build_backbone(backbone_name, image_size).to(device).eval()
    rows = ImageRows(images, np.zeros(len(images), np.int64), image_transform(image_size, backbone.mean, backbone.std))
    return torch.cat([backbone(x.to(device)).float().cpu()
                      for x, _ in tqdm(loader(rows, batch_size, False, 0), desc="vlm features", unit="batch")])


def subset(rows: Sequence[dict], n: int | None, seed: int) -> list[dict]:
    """`n` rows drawn at random (in their order), or all of them."""
    if n is None or n >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(np.random.default_rng(seed).permutation(len(rows))[:n])]


def answer_values(labels: LabelSet, row: dict) -> dict[str, str | None]:
    return {a: enc.label(row.get(a)) if known(row.get(a)) else None for a, enc in labels.labels.items()}


def collate(template: JsonTemplate, rows: Sequence[dict], labels: LabelSet) -> tuple[torch.Tensor, ...]:
    pairs = [template.target(answer_values(labels, r)) for r in rows]
    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), template.eos)
    targets = torch.full((len(pairs), width), IGNORE)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (seq, lab) in enumerate(pairs):
        ids[i, :len(seq)], targets[i, :len(lab)], mask[i, :len(seq)] = torch.tensor(seq), torch.tensor(lab), 1
    return ids, targets, mask


def build(cfg: dict, labels: LabelSet, feature_dim: int, cache_dir, tune: bool = True):
    """(model, template, tokenizer): base language model (+ LoRA when `tune`) and a fresh projector,
    or the HF image-text-to-text model (+ LoRA) for `language: hf:<name or path>`."""
    if cfg["language"].startswith("hf:"):
        from catalog_search.vlm.hf import HFVisionLM, load_hf

        hf, processor = load_hf(cfg["language"][3:], cfg["lora"] if tune else None)
        model = HFVisionLM(hf, processor, cfg["prompt"], cfg["image_size"])
        return model, template_for(processor.tokenizer, labels), processor.tokenizer
    tokenizer = load_tokenizer(cfg["language"], cache_dir)
    torch.manual_seed(cfg["seed"])
    lm = load_language_model(cfg["language"], cache_dir, len(tokenizer))
    lm = add_lora(lm, cfg["lora"]) if tune else lm
    model = AttributeVLM(lm, feature_dim, cfg["visual_tokens"], prompt_ids(tokenizer, cfg["prompt"]))
    return model, template_for(tokenizer, labels), tokenizer


def fit(model: AttributeVLM, template: JsonTemplate, labels: LabelSet, rows: Sequence[dict], features: torch.Tensor,
        cfg: dict, device: torch.device, live=None) -> dict:
    """AdamW on the projector and the adapters, cosine schedule with warmup; returns a record."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = cfg["epochs"] * math.ceil(len(rows) / cfg["batch_size"])
    warmup = max(1, int(cfg["warmup"] * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    generator = torch.Generator().manual_seed(cfg["seed"])
    model.to(device).train()
    start, record = time.perf_counter(), {"epochs": []}
    for epoch in range(cfg["epochs"]):
        order, losses = torch.randperm(len(rows), generator=generator), []
        for k in tqdm(range(0, len(rows), cfg["batch_size"]), desc=f"vlm epoch {epoch + 1}", unit="step"):
            batch = order[k:k + cfg["batch_size"]]
            ids, targets, mask = (t.to(device) for t in collate(template, [rows[i] for i in batch], labels))
            loss = model(features[batch].to(device), ids, targets, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg["grad_clip"])
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        record["epochs"].append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4)})
        if live is not None:
            live.log_metric("train/loss", record["epochs"][-1]["loss"])
            live.next_step()
    record.update(steps=steps, train_seconds=round(time.perf_counter() - start, 1),
                  trainable_params=sum(p.numel() for p in trainable),
                  total_params=sum(p.numel() for p in model.parameters()))
    return record
