"""Hard-negative batches: each batch partly made of near neighbours, mined once with a model.

Random batches of a catalog are easy (a shoe against a watch). Batches of products a model
confuses (navy vs blue, casual vs sports shoes) carry the distinctions shoppers search for. Before
the first step the scenario's starting weights (the zero-shot model for every scenario that
trains) embed the train split; FAISS ranks, for each product's first caption (its title), every
image; the products at ranks `ranks[0]..ranks[1]` are its mined neighbours. The very top is
skipped on purpose: it holds the unlabelled duplicates a catalog is full of. A guard drops
neighbours that are true positives of the product: the same title, or the same group (variants,
near-duplicate photos). Products that merely share an attribute caption ("black shoes") stay:
they are the hard ones, and the multi-positive loss knows which of their captions match.

A batch is then `share` of clusters (a seed product and `cluster - 1` of its neighbours, drawn at
random) and the rest random products; no product twice in one batch.
"""
from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import torch

from catalog_search.evaluation import normalise
from catalog_search.training.data import SplitEncoder


@torch.no_grad()
def mine(enc: SplitEncoder, ranks: tuple[int, int]) -> list[np.ndarray]:
    """Each train image's neighbours (row numbers, nearest first) after the guard."""
    n = len(enc.images)
    ptr, ind = enc.image_to_text.indptr, enc.image_to_text.indices
    images = normalise(enc.embed_all("image")).astype(np.float32)
    first = ind[ptr[:-1]]  # each image's first caption: its title where it has one
    needed, at = np.unique(first, return_inverse=True)
    texts = normalise(enc.embed_rows("text", needed)).astype(np.float32)[at]
    index = faiss.IndexFlatIP(images.shape[1])
    index.add(images)
    # room for what the guard removes: the product's own group and its title's other products
    _, found = index.search(texts, min(n, 2 * ranks[1] + 16))
    out = []
    for i, row in enumerate(found):
        keep = [j for j in row if j >= 0 and enc.groups[j] != enc.groups[i] and first[j] != first[i]]
        out.append(np.asarray(keep[ranks[0] - 1:ranks[1]], np.int64))
    return out


def hard_batches(neighbours: list[np.ndarray], n: int, batch_size: int, steps: int, cfg: dict[str, Any],
                 rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches: `cfg["share"]` of each in mined clusters, the rest random."""
    order = rng.permutation(n)
    mined, cluster = round(cfg["share"] * batch_size), cfg["cluster"]
    pos, batches = 0, []

    def next_unused(used: set[int]) -> int:
        nonlocal order, pos
        while True:
            if pos == len(order):
                order, pos = rng.permutation(n), 0
            pos += 1
            if int(order[pos - 1]) not in used:
                return int(order[pos - 1])

    for _ in range(steps):
        batch: list[int] = []
        used: set[int] = set()
        while len(batch) < mined:
            seed = next_unused(used)
            free = [int(j) for j in neighbours[seed] if int(j) not in used]
            take = min(cluster - 1, mined - len(batch) - 1, len(free))
            picked = [seed, *(rng.choice(free, take, replace=False).tolist() if take > 0 else [])]
            batch += picked
            used.update(picked)
        while len(batch) < batch_size:
            row = next_unused(used)
            batch.append(row)
            used.add(row)
        batches.append(np.asarray(batch, np.int64))
    return batches
