"""Training of the attribute classifier: masked, class-weighted cross-entropy per head.

A frozen backbone (mode `frozen`) gives the same features every epoch, so they are computed
once and only the heads train on them (no flips then: a flipped image would need its own pass).
"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from open_clip_train.scheduler import cosine_lr
from tqdm import tqdm

from catalog_search.attributes.model import AttributeClassifier, prepare, set_train_mode
from catalog_search.core.adapters import trainable_summary
from catalog_search.core.backbones import backbone_features, build_backbone, pixel_batches
from catalog_search.core.data import ImageRows, image_transform, loader
from catalog_search.core.device import autocast, eval_mode
from catalog_search.core.labels import LabelSet, MISSING


class AttributeLoss(nn.Module):
    """Sum over heads of `loss_weights[head]` x cross-entropy with the head's class weights.

    Rows whose label is missing are ignored (ignore_index), not counted as any class; a head
    with no labelled row in the batch adds nothing (PyTorch would give 0/0 = nan)."""

    def __init__(self, labels: LabelSet, loss_weights: dict[str, float]):
        super().__init__()
        self.names = list(labels.heads)
        self.head_weight = {a: float((loss_weights or {}).get(a, 1.0)) for a in self.names}
        for a in self.names:
            self.register_buffer(f"w_{a}", torch.tensor(labels.labels[a].weights, dtype=torch.float32))

    def forward(self, logits: dict[str, torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total, parts = logits[self.names[0]].new_zeros(()), {}
        for j, a in enumerate(self.names):
            y = targets[:, j]
            if (y != MISSING).any():
                loss = F.cross_entropy(logits[a].float(), y, weight=getattr(self, f"w_{a}"), ignore_index=MISSING)
                total = total + self.head_weight[a] * loss
                parts[a] = float(loss.detach())
        return total, parts


@torch.no_grad()
def predict_probs(model: AttributeClassifier, images: Sequence[bytes], batch_size: int, device: torch.device,
                  workers: int = 0, features: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Class probabilities per head, (n_images, n_classes) each; `features` skips the backbone."""
    if features is None:
        batches = pixel_batches(model.backbone, images, batch_size, workers)
    else:
        batches = features.split(batch_size)
    out: dict[str, list] = {a: [] for a in model.heads}
    with eval_mode(model), autocast(device):
        for x in batches:
            x = x.to(device)
            logits = model.classify(x) if features is not None else model(x)
            for a, z in logits.items():
                out[a].append(z.float().softmax(-1).cpu().numpy())
    return {a: np.concatenate(v) for a, v in out.items()}


def accuracy(probs: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, float]:
    """Accuracy per head over the rows whose label the model has a class for."""
    out = {}
    for j, (a, p) in enumerate(probs.items()):
        known = targets[:, j] != MISSING
        out[a] = round(float((p[known].argmax(1) == targets[known, j]).mean()), 4) if known.any() else float("nan")
    return out


def memory_mb(device: torch.device, peak: bool) -> float:
    """CUDA: the allocator's current or peak bytes; CPU: the process's current or peak resident set.
    Peak minus the figure just before training is what training itself needs (imports and the
    frozen weights are the same for every mode)."""
    if device.type == "cuda":
        return round((torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device) / 2**20, 1)
    if peak:
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    with open("/proc/self/statm") as f:  # resident pages
        return round(int(f.read().split()[1]) * resource.getpagesize() / 2**20, 1)


def fit(model: AttributeClassifier, labels: LabelSet, train_rows: Sequence[dict], val_rows: Sequence[dict],
        cfg: dict, device: torch.device, live=None) -> dict:
    """Train the heads (and LoRA or the whole backbone, per `cfg["mode"]`); returns the run's record."""
    torch.manual_seed(cfg["seed"])
    b, bs, workers = model.backbone, cfg["batch_size"], cfg["workers"]
    y_train, y_val = labels.targets(train_rows), labels.targets(val_rows)
    train_images, val_images = [r["image"] for r in train_rows], [r["image"] for r in val_rows]
    model.to(device)
    cached = cfg["mode"] == "frozen"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory_before = memory_mb(device, peak=False)
    if cached:
        data = torch.utils.data.TensorDataset(backbone_features(b, train_images, bs, device, workers),
                                              torch.from_numpy(y_train))
        val_features = backbone_features(b, val_images, bs, device, workers)
    else:
        data = ImageRows(train_images, y_train, image_transform(b.image_size, b.mean, b.std, cfg["augment"]))
        val_features = None
    batches = loader(data, bs, True, 0 if cached else workers, cfg["seed"])
    criterion = AttributeLoss(labels, cfg["loss_weights"]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    total = cfg["epochs"] * len(batches)
    schedule = cosine_lr(optimizer, cfg["lr"], int(cfg["warmup_fraction"] * total), total)
    step, start, history = 0, time.perf_counter(), []
    for epoch in range(cfg["epochs"]):
        set_train_mode(model, cfg["mode"])
        losses = []
        for x, y in tqdm(batches, desc=f"attributes epoch {epoch + 1}/{cfg['epochs']}", unit="batch"):
            schedule(step)
            with autocast(device, cfg["precision"]):
                logits = model.classify(x.to(device)) if cached else model(x.to(device))
            loss, parts = criterion(logits, y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if live is not None:
                live.log_metric("train/loss", losses[-1])
                for a, v in parts.items():
                    live.log_metric(f"train/loss_{a}", v)
                live.next_step()
        val = accuracy(predict_probs(model, val_images, bs, device, workers, val_features), y_val)
        history.append({"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), **{f"val_acc_{a}": v for a, v in val.items()}})
        if live is not None:
            for a, v in val.items():
                live.log_metric(f"val/accuracy_{a}", v, plot=False)
    seconds = time.perf_counter() - start
    return {"steps": step, "train_seconds": round(seconds, 2), "samples_per_second": round(step * bs / max(seconds, 1e-9), 1),
            "final_loss": history[-1]["loss"] if history else None, "epochs": history,  # the last epoch's mean
            "peak_memory_mb": memory_mb(device, peak=True), "memory_before_train_mb": memory_before,
            "memory_kind": "cuda_allocated" if device.type == "cuda" else "process_peak_rss"}


def train_classifier(cfg: dict, train_rows: Sequence[dict], val_rows: Sequence[dict], device: torch.device,
                     live=None, models_root: Path = Path("models")):
    """Labels fitted on `train_rows`, the classifier built and prepared per `cfg`, trained.

    Returns (model, peft wrapper or None, labels, record with sizes and the run's numbers)."""
    labels = LabelSet.fit(train_rows, cfg["heads"], cfg["min_count"], cfg["class_weights"])
    torch.manual_seed(cfg["seed"])  # heads and LoRA initialisation
    backbone = build_backbone(cfg["backbone"], cfg["image_size"], models_root)
    model = AttributeClassifier(backbone, labels, cfg["head_hidden"], cfg["head_dropout"], cfg["hierarchy"])
    wrapper = prepare(model, cfg["mode"], cfg["lora"])
    record = {**trainable_summary(model, backbone="backbone.", head="heads."), **fit(model, labels, train_rows, val_rows, cfg, device, live)}
    return model, wrapper, labels, record
