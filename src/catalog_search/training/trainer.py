"""Contrastive fine-tuning of one scenario: open_clip's losses and scheduler, peft LoRA.

nanoGPT-style: one function that reads top to bottom. Frozen towers come from the feature
cache (SplitEncoder), so an epoch costs only what the scenario actually trains.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from open_clip.loss import ClipLoss, SigLipLoss
from open_clip_train.scheduler import cosine_lr

from catalog_search.evaluation import retrieval_metrics
from catalog_search.index import normalise
from catalog_search.models.encode import autocast, eval_mode
from catalog_search.models.registry import ModelBundle
from catalog_search.models.scenarios import Scenario
from catalog_search.models.towers import find_towers
from catalog_search.training.data import SplitEncoder


def set_train_mode(model: nn.Module, scenario: Scenario) -> None:
    """Train mode (dropout, LoRA dropout) only in towers that learn; BatchNorm statistics stay
    frozen unless the tower is fully trained, so a LoRA tower's base really is unchanged."""
    model.eval()
    for name, tower in find_towers(model).items():
        mode = scenario.tower_mode(name)
        if mode == "frozen":
            continue
        modules = [m for n, m in model.named_modules() if n.startswith(tower.param_prefixes) or
                   (tower.root and n == tower.root)]
        for m in modules:
            m.train(mode == "full" or not isinstance(m, nn.modules.batchnorm._BatchNorm))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's convention: no weight decay on gains, biases, norms and the logit scale/bias."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
            (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


@torch.no_grad()
def validate(model: nn.Module, enc: SplitEncoder, device: torch.device) -> dict[str, float]:
    with autocast(device), eval_mode(model):
        images, texts = enc.embed_all("image"), enc.embed_all("text")
    metrics, _ = retrieval_metrics(normalise(images), normalise(texts), enc.image_to_text, enc.text_to_image)
    return metrics


def _log_val(live, val: dict[str, float]) -> dict[str, float]:
    if live is not None:
        for key in ("text_to_image_R@10", "image_to_text_R@10", "text_to_image_mrr"):
            live.log_metric(f"val/{key}", val[key])
    return val


def train(bundle: ModelBundle, scenario: Scenario, train_samples: list[dict], val_samples: list[dict],
          cfg: dict, device: torch.device, live=None) -> dict[str, Any]:
    """Train in place; returns a summary (steps, time, losses, last validation metrics)."""
    model = bundle.model
    started = time.perf_counter()
    frozen = {t for t in ("image", "text") if scenario.tower_mode(t) == "frozen"}
    bs = cfg["batch_size"]
    val_enc = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, val_samples, frozen, device, bs)
    if not scenario.trains or cfg["epochs"] == 0:
        val = _log_val(live, validate(model, val_enc, device))
        return {"steps": 0, "epochs": 0, "val": val, "train_seconds": round(time.perf_counter() - started, 2)}
    train_enc = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, train_samples, frozen, device, bs)
    summary: dict[str, Any] = {}

    loss_fn = ClipLoss() if cfg["loss"] == "infonce" else SigLipLoss()
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-6)
    n = len(train_enc.images)
    steps_per_epoch = n // bs + (1 if n % bs >= 2 else 0)  # a batch of one has no negatives
    total = steps_per_epoch * cfg["epochs"]
    scheduler = cosine_lr(optimizer, cfg["lr"], int(cfg["warmup_fraction"] * total), total)
    rng = np.random.default_rng(cfg["seed"])
    params = [p for p in model.parameters() if p.requires_grad]
    step, losses = 0, []
    for epoch in range(cfg["epochs"]):
        set_train_mode(model, scenario)
        order = rng.permutation(n)
        for b in range(steps_per_epoch):
            idx = order[b * bs:(b + 1) * bs].tolist()
            lr = scheduler(step)
            with autocast(device):
                image = nn.functional.normalize(train_enc.embed("image", idx), dim=-1)
                text = nn.functional.normalize(train_enc.embed("text", train_enc.sample_captions(idx, rng)), dim=-1)
                extra = [model.logit_bias] if cfg["loss"] == "siglip" else []
                loss = loss_fn(image.float(), text.float(), model.logit_scale.exp(), *extra)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            losses.append(loss.item())
            if live is not None:
                live.log_metric("train/loss", losses[-1])
                live.log_metric("train/lr", lr)
                live.next_step()
        val = _log_val(live, validate(model, val_enc, device))
        print(f"epoch {epoch + 1}/{cfg['epochs']}: loss {np.mean(losses[-steps_per_epoch:]):.4f} "
              f"val t2i R@10 {val['text_to_image_R@10']:.3f} i2t R@10 {val['image_to_text_R@10']:.3f}", flush=True)
        summary["val"] = val
    model.eval()
    summary.update(steps=step, epochs=cfg["epochs"], final_loss=round(float(np.mean(losses[-steps_per_epoch:])), 4),
                   train_seconds=round(time.perf_counter() - started, 2))
    return summary
