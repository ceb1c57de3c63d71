"""Training checkpoints: everything a killed run needs to continue as if it never stopped.

A checkpoint holds the trainable tensors (LoRA, projections, logit scale/bias: frozen weights
are rebuilt from `model`), the optimizer and grad-scaler states, the RNG states, the step
(the cosine schedule is a function of it), the epoch's data-order seed state and the logged
history. It is written atomically (temporary file + rename), so a kill during the write leaves
the previous checkpoint. A fingerprint of the run's configuration guards against resuming a
checkpoint from different params: that one is ignored, with a message.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from catalog_search.io import atomic_path

LAST, BEST = "last.pt", "best.pt"
# knobs that change when things happen, not what is computed
_NOT_FINGERPRINTED = ("checkpoint_every", "workers")


def fingerprint(cfg: dict, extra: dict) -> str:
    keep = {k: v for k, v in cfg.items() if k not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps([keep, extra], sort_keys=True, default=str).encode()).hexdigest()[:16]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise ValueError(f"checkpoint lacks trainable tensors {missing[:3]}...: it belongs to another scenario")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def rng_state(device: torch.device) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: Path, expected_fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at `path` if it belongs to this configuration, else None (and says why)."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != expected_fingerprint:
        print(f"{path}: written by a run with other params; starting from step 0", flush=True)
        return None
    return state


def clear(folder: Path) -> None:
    """Remove a finished run's checkpoints (the folder stays: it is the stage's output)."""
    for name in (LAST, BEST):
        (folder / name).unlink(missing_ok=True)
