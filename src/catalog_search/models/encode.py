"""Batched encoding of images and texts, with or without the projection; device and autocast."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from catalog_search.models.scenarios import PRECISIONS
from catalog_search.models.towers import find_towers, projection_removed
from catalog_search.params import ParamsError, check_choice


def pick_device() -> torch.device:
    """cuda, then mps, then cpu: every stage runs anywhere and uses an accelerator when present."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, precision: str = "auto"):
    """`auto` is bf16 on GPU and fp32 on CPU (where bf16 matmuls are slower on most chips);
    fp16 needs CUDA, where the trainer pairs it with a grad scaler."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ParamsError(f"precision fp16 needs a CUDA device (fp16 without a grad scaler underflows); "
                          f"this run is on {device.type}: use bf16 or fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Inference behaviour (BatchNorm running stats, no dropout), each module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


@torch.no_grad()
def encode(model: nn.Module, tower: str, items: Sequence, to_input: Callable, batch_size: int,
           device: torch.device, projected: bool = True, desc: str | None = None) -> torch.Tensor:
    """Encode `items` (PIL images or strings) with one tower; float32 rows on the CPU.

    `projected=False` returns the tower's features before its projection: what a frozen tower
    contributes, computed once and reused every epoch.
    """
    fn = model.encode_image if tower == "image" else model.encode_text
    ctx = nullcontext() if projected else projection_removed(model, find_towers(model)[tower])
    out = []
    with ctx, eval_mode(model):
        for start in tqdm(range(0, len(items), batch_size), desc=desc or f"encode {tower}", unit="batch",
                          disable=desc is None):
            with autocast(device):
                out.append(fn(to_input(items[start:start + batch_size])).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
