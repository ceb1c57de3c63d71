"""Training and extraction loops of the attribute VLM (features precomputed: the backbone is frozen)."""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from open_clip_train.scheduler import cosine_lr
from tqdm import tqdm

from catalog_search.core.adapters import trainable_summary
from catalog_search.core.backbones import backbone_features, build_backbone
from catalog_search.core.device import autocast
from catalog_search.core.labels import LabelSet, MISSING, known
from catalog_search.core.names import parse_name
from catalog_search.vlm.model import AttributeVLM
from catalog_search.vlm.template import IGNORE, JsonTemplate


def image_inputs(cfg: dict, images: Sequence[bytes], batch_size: int, device: torch.device) -> torch.Tensor:
    """Per-image model inputs: the frozen backbone's features (offline path, computed once) or the
    HF model's pixel values (`language: hf:...`)."""
    if parse_name(cfg["language"], "vlm.language").scheme == "hf":
        from catalog_search.vlm.hf import pixel_values

        return pixel_values(parse_name(cfg["language"]).value, list(images), batch_size)
    backbone = build_backbone(cfg["backbone"], cfg["image_size"]).to(device)
    return backbone_features(backbone, images, batch_size, device)


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


def tag_targets(labels: LabelSet, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Each attribute's class ids (MISSING where unknown): what the projector's tag heads learn."""
    return {a: torch.from_numpy(enc.encode([r.get(a) for r in rows])) for a, enc in labels.labels.items()}


def tag_loss(model: AttributeVLM, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    tags = model.tags(features)
    return sum(F.cross_entropy(tags[a], t.to(features.device), ignore_index=MISSING) for a, t in targets.items()
               if (t != MISSING).any())


def fit(model: AttributeVLM, template: JsonTemplate, labels: LabelSet, rows: Sequence[dict], features: torch.Tensor,
        cfg: dict, device: torch.device, live=None) -> dict:
    """Two phases, as LLaVA trains. `align_epochs`: the projector's tag heads on every row, by
    cross-entropy with the catalog's values, the language model out of the loop (seconds: the
    features are precomputed). Then `epochs` over `train_rows` of them: the LoRA adapters alone on
    the answer's next-token loss, the projector fixed (the learning-rate split at its extreme:
    tuned with the adapters, the heads lost 0.06-0.10 colour accuracy on the test split, and the
    language model can only copy what the tokens say). AdamW, open_clip's cosine schedule with
    warmup in each phase. The HF path has no projector of its own: it runs the second phase, on
    its adapters. Returns a record (`final_loss`: the last epoch's mean)."""
    model.to(device).train()
    start, record = time.perf_counter(), {"epochs": []}
    generator = torch.Generator().manual_seed(cfg["seed"])
    targets = tag_targets(labels, rows)
    projector = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("lm.")]
    adapters = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("lm.")]
    tune_rows = subset(range(len(rows)), cfg["train_rows"], cfg["seed"])
    phases = [("align", cfg["align_epochs"] if projector else 0, cfg["align_lr"], projector, list(range(len(rows)))),
              ("tune", cfg["epochs"], cfg["lr"], adapters, tune_rows)]
    for phase, epochs, lr, params, order_of in phases:
        if not epochs:
            continue
        for p in projector + adapters:  # only this phase's parameters: backward stops where they start
            p.requires_grad_(any(p is q for q in params))
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg["weight_decay"])
        steps = epochs * math.ceil(len(order_of) / cfg["batch_size"])
        schedule = cosine_lr(optimizer, lr, int(cfg["warmup_fraction"] * steps), steps)
        step = 0
        for epoch in range(epochs):
            order, losses = torch.tensor(order_of)[torch.randperm(len(order_of), generator=generator)], []
            for k in tqdm(range(0, len(order), cfg["batch_size"]), desc=f"vlm {phase} {epoch + 1}", unit="step"):
                schedule(step)
                batch = order[k:k + cfg["batch_size"]]
                x = features[batch].to(device)
                with autocast(device, cfg["precision"]):
                    if phase == "align":
                        loss = tag_loss(model, x, {a: t[batch] for a, t in targets.items()})
                    else:
                        ids, answer, mask = (t.to(device) for t in collate(template, [rows[i] for i in batch], labels))
                        loss = model(x, ids, answer, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
                optimizer.step()
                losses.append(loss.item())
                step += 1
            record["epochs"].append({"phase": phase, "epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4)})
            if live is not None:
                live.log_metric(f"train/{phase}_loss", record["epochs"][-1]["loss"])
                live.next_step()
        record[f"{phase}_steps"] = steps
    trainable = projector + adapters
    for p in trainable:
        p.requires_grad_(True)
    record.update(final_loss=record["epochs"][-1]["loss"], train_seconds=round(time.perf_counter() - start, 1),
                  **trainable_summary(model))
    return record
