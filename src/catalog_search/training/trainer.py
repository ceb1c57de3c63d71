"""Contrastive fine-tuning of one scenario: open_clip's losses and scheduler, peft LoRA.

nanoGPT-style: one loop that reads top to bottom. What makes it trustworthy lives beside it:
the gradient cache (`gradcache.py`: the contrastive batch independent of what fits in memory),
checkpoints (`checkpoint.py`: a killed run resumes bit-for-bit), data parallelism
(`distributed.py`: features gathered across ranks as open_clip does), and the frozen-tower
feature cache (`data.py`: an epoch costs only what the scenario trains).
"""
from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from open_clip_train.scheduler import cosine_lr

from catalog_search.core.adapters import train_except_batchnorm
from catalog_search.core.device import autocast, eval_mode
from catalog_search.core.towers import find_towers, frozen_prefix
from catalog_search.evaluation import normalise, retrieval_metrics
from catalog_search.models.registry import ModelBundle
from catalog_search.models.scenarios import Scenario
from catalog_search.params import ParamsError
from catalog_search.training import checkpoint
from catalog_search.training.data import SplitEncoder
from catalog_search.training.distributed import World, average_gradients, mean
from catalog_search.training.gradcache import contrastive_step
from catalog_search.training.losses import MultiPositiveClipLoss, MultiPositiveSigLipLoss
from catalog_search.training.mining import hard_batches, mine


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
        if mode == "full":
            for m in modules:
                m.train()
        else:
            train_except_batchnorm(modules)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's convention: no weight decay on gains, biases, norms and the logit scale/bias."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
            (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


@torch.no_grad()
def validate(model: nn.Module, enc: SplitEncoder, device: torch.device, precision: str = "auto") -> dict[str, float]:
    with autocast(device, precision), eval_mode(model):
        images, texts = enc.embed_all("image"), enc.embed_all("text")
    metrics, _ = retrieval_metrics(normalise(images), normalise(texts), enc.image_to_text, enc.text_to_image)
    return metrics


def _log(live, record: dict[str, Any]) -> None:
    """One step's record into dvclive (also used to replay a resumed run's history)."""
    if live is None:
        return
    if "loss" in record:
        live.log_metric("train/loss", record["loss"])
        live.log_metric("train/lr", record["lr"])
    for key in ("text_to_image_R@10", "image_to_text_R@10", "text_to_image_mrr"):
        if "val" in record:
            live.log_metric(f"val/{key}", record["val"][key])
    live.next_step()


def _plan(n: int, bs: int, steps_per_epoch: int, enc: SplitEncoder, rng: np.random.Generator,
          neighbours: list[np.ndarray] | None, hard: dict[str, Any]):
    """One epoch's batches of image rows and their sampled captions (caption augmentation); with
    mined `neighbours`, hard-negative batches."""
    if neighbours is not None:
        batches = hard_batches(neighbours, n, bs, steps_per_epoch, hard, rng)
        return batches, [np.asarray(enc.sample_captions(b, rng)) for b in batches]
    order = rng.permutation(n)
    captions = np.asarray(enc.sample_captions(order, rng))
    return ([order[k * bs:(k + 1) * bs] for k in range(steps_per_epoch)],
            [captions[k * bs:(k + 1) * bs] for k in range(steps_per_epoch)])


def contrastive_loss(name: str, world: World) -> nn.Module:
    """open_clip's losses, taking a batch's positives matrix (none: open_clip's own); across ranks
    the features are gathered with their gradients."""
    if name == "infonce":
        return MultiPositiveClipLoss(rank=world.rank, world_size=world.size)
    return MultiPositiveSigLipLoss(rank=world.rank, world_size=world.size)


def logit_args(model: nn.Module, loss: str) -> Callable[[], list[torch.Tensor]]:
    """The loss's learnable arguments after the features: scale, and SigLIP's bias."""
    if loss == "siglip":
        return lambda: [model.logit_scale.exp(), model.logit_bias]
    return lambda: [model.logit_scale.exp()]


def train(bundle: ModelBundle, scenario: Scenario, train_samples: list[dict], val_samples: list[dict],
          cfg: dict, device: torch.device, live=None, world: World = World(), checkpoint_dir: Path | None = None,
          on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train in place; the model ends with the best validated weights. Returns a summary.

    Validation runs every `eval_every` steps (0: each epoch end); early stopping watches
    `early_stopping.metric`. With `checkpoint_dir`, the run resumes from its last checkpoint.
    """
    model, started = bundle.model, time.perf_counter()
    precision = cfg["precision"]
    frozen = {t for t in ("image", "text") if scenario.tower_mode(t) == "frozen"}
    bs, micro = cfg["batch_size"], cfg["micro_batch_size"] or cfg["batch_size"]
    if bs % world.size:
        raise ParamsError(f"train.batch_size={bs} must be a multiple of the number of processes ({world.size})")
    towers = find_towers(model)
    prefix = {t: cut for t in ("image", "text") if scenario.tower_mode(t) == "lora"
              and (cut := frozen_prefix(model, towers[t], cfg["lora"][f"{t}_last_blocks"]))}
    enc_args = dict(frozen=frozen, prefix=prefix, device=device, batch_size=micro, world=world,
                    cache=cfg["feature_cache"], precision=precision)
    val_enc = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, val_samples, **enc_args)
    total_from_epochs = cfg["epochs"] * (len(train_samples) // bs)
    total = cfg["max_steps"] or total_from_epochs
    if not scenario.trains or total == 0:
        val = validate(model, val_enc, device, precision)
        _log(live, {"val": val})
        return {"steps": 0, "epochs": 0, "val": val, "train_seconds": round(time.perf_counter() - started, 2)}

    train_enc = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, train_samples, workers=cfg["workers"], **enc_args)
    n = len(train_enc.images)
    steps_per_epoch = n // bs  # drop_last, as open_clip: every step has the full batch of negatives
    if steps_per_epoch == 0:
        raise ParamsError(f"train split has {n} images, fewer than train.batch_size={bs}; lower the batch size")
    loss_fn = contrastive_loss(cfg["loss"], world)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"]), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                  eps=cfg["eps"])
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    scheduler = cosine_lr(optimizer, cfg["lr"], int(cfg["warmup_fraction"] * total), total)
    params = [p for p in model.parameters() if p.requires_grad]
    stop_cfg = cfg["early_stopping"]
    eval_every = cfg["eval_every"] or steps_per_epoch

    hard, neighbours = cfg["hard_negatives"], None
    if hard["share"] > 0:  # mined with the starting weights (the zero-shot model), before any checkpoint loads
        with autocast(device, precision), eval_mode(model):
            neighbours = mine(train_enc, tuple(hard["ranks"]))
        if world.is_main:
            print(f"hard negatives: {sum(map(len, neighbours)) / n:.0f} mined neighbours per product", flush=True)

    rng = np.random.default_rng(cfg["seed"])
    step, history, best, since_best, best_state = 0, [], None, 0, None
    fingerprint = checkpoint.fingerprint(cfg, {"model": bundle.name, "n_train": n, "n_val": len(val_samples),
                                               "world": world.size, "scenario": repr(scenario)})
    last_path = checkpoint_dir / checkpoint.LAST if checkpoint_dir else None
    state = checkpoint.load(last_path, fingerprint) if last_path else None
    if state:
        checkpoint.load_trainable(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"], device)
        rng.bit_generator.state = state["epoch_rng"]
        step, history, best, since_best = state["step"], state["history"], state["best"], state["since_best"]
        for record in history:
            _log(live, record)
        if world.is_main:
            print(f"resumed from {last_path} at step {step}/{total}", flush=True)

    def save_checkpoint(epoch_rng: dict) -> None:
        if last_path and world.is_main:
            checkpoint.save(last_path, {
                "fingerprint": fingerprint, "step": step, "trainable": checkpoint.trainable_state(model),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": checkpoint.rng_state(device), "epoch_rng": epoch_rng, "history": history, "best": best,
                "since_best": since_best})

    first_step, timed_steps, step_seconds = True, 0, 0.0  # throughput: steps after the first (warm-up)
    stopped = step >= total or (stop_cfg["patience"] and since_best >= stop_cfg["patience"])
    while not stopped:
        epoch, first = divmod(step, steps_per_epoch)
        epoch_rng = rng.bit_generator.state
        batches, captions = _plan(n, bs, steps_per_epoch, train_enc, rng, neighbours, hard)
        last = min(steps_per_epoch, first + total - step)
        local = world.split(bs)
        inputs = train_enc.load([(b[local], c[local]) for b, c in zip(batches[first:last], captions[first:last])])
        set_train_mode(model, scenario)
        for k in range(first, last):
            began = time.perf_counter()
            lr = scheduler(step)
            image_x, text_x = next(inputs)
            optimizer.zero_grad(set_to_none=True)
            positives = None if cfg["positives"] == "pair" else \
                torch.from_numpy(train_enc.positives(batches[k], captions[k], cfg["positives"]))
            loss = contrastive_step(train_enc, image_x, text_x, partial(loss_fn, positives=positives),
                                    logit_args(model, cfg["loss"]), micro,
                                    lambda l: scaler.scale(l).backward(), lambda: autocast(device, precision))
            average_gradients(params, world)
            scaler.unscale_(optimizer)
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            record = {"loss": mean(loss.item(), world, device), "lr": lr}  # .item() waits for the GPU
            if not first_step:
                timed_steps, step_seconds = timed_steps + 1, step_seconds + time.perf_counter() - began
            first_step = False
            if step % eval_every == 0 or step == total:
                record["val"] = validate(model, val_enc, device, precision)
                score = record["val"][stop_cfg["metric"]]
                if best is None or score > best["score"] + stop_cfg["min_delta"]:
                    best, since_best = {"score": score, "step": step, "val": record["val"]}, 0
                    best_state = checkpoint.trainable_state(model)
                    if world.is_main and checkpoint_dir:
                        checkpoint.save(checkpoint_dir / checkpoint.BEST, {"step": step, "trainable": best_state})
                else:
                    since_best += 1
                set_train_mode(model, scenario)
                recent = [r["loss"] for r in (history + [record])[-eval_every:]]
                if world.is_main:  # one progress line per run, not per rank
                    print(f"step {step}/{total} (epoch {epoch + 1}): loss {np.mean(recent):.4f} "
                          f"val t2i R@10 {record['val']['text_to_image_R@10']:.3f} "
                          f"i2t R@10 {record['val']['image_to_text_R@10']:.3f}", flush=True)
            history.append(record)
            _log(live, record)
            stopped = step >= total or bool(stop_cfg["patience"] and since_best >= stop_cfg["patience"])
            if step % cfg["checkpoint_every"] == 0 or stopped:
                save_checkpoint(rng.bit_generator.state if step % steps_per_epoch == 0 else epoch_rng)
            if on_step:
                on_step(step)
            if stopped:
                break

    if best_state is None:  # resumed after the best step: read the best weights back
        saved = torch.load(checkpoint_dir / checkpoint.BEST, map_location="cpu")
        assert saved["step"] == best["step"], f"{checkpoint_dir / checkpoint.BEST} is not from step {best['step']}"
        best_state = saved["trainable"]
    checkpoint.load_trainable(model, best_state)  # the best validated weights are the result
    model.eval()
    losses = [r["loss"] for r in history[-steps_per_epoch:]]
    return {"steps": step, "epochs": round(step / steps_per_epoch, 2), "best_step": best["step"], "val": best["val"],
            "final_loss": round(float(np.mean(losses)), 4), "stopped_early": step < total,
            "samples_per_second": round(timed_steps * bs / step_seconds, 1) if timed_steps else None,
            "train_seconds": round(time.perf_counter() - started, 2)}
