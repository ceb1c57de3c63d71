"""Batched encoding of images and texts with a CLIP model, with or without the projection."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from catalog_search.core.device import autocast, eval_mode
from catalog_search.core.towers import find_towers, projection_removed


def by_length(items: Sequence) -> list[int] | None:
    """Texts shortest first (None for images): batched so, a BERT tower's trimmed padding is a few
    tokens instead of the batch's longest caption (half the compute on catalog captions)."""
    if len(items) == 0 or isinstance(items[0], str):
        return sorted(range(len(items)), key=lambda i: len(items[i]))
    return None


def unsort(rows: torch.Tensor, order: list[int] | None) -> torch.Tensor:
    """`rows` computed in `order` (by_length), back in the items' own order."""
    if not order:
        return rows
    out = torch.empty_like(rows)
    out[torch.as_tensor(order)] = rows
    return out


@torch.no_grad()
def encode(model: nn.Module, tower: str, items: Sequence, to_input: Callable, batch_size: int,
           device: torch.device, projected: bool = True, desc: str | None = None, precision: str = "auto") -> torch.Tensor:
    """Encode `items` (PIL images or strings) with one tower; float32 rows on the CPU.

    `projected=False` returns the tower's features before its projection: what a frozen tower
    contributes, computed once and reused every epoch.
    """
    fn = model.encode_image if tower == "image" else model.encode_text
    ctx = nullcontext() if projected else projection_removed(model, find_towers(model)[tower])
    order = by_length(items)
    items = items if order is None else [items[i] for i in order]
    out = []
    with ctx, eval_mode(model):
        for start in tqdm(range(0, len(items), batch_size), desc=desc or f"encode {tower}", unit="batch",
                          disable=desc is None):
            with autocast(device, precision):
                out.append(fn(to_input(items[start:start + batch_size])).float().cpu())
    return unsort(torch.cat(out), order) if out else torch.empty(0)
