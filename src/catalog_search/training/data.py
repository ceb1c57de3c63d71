"""One split's images and captions, embedded by the model; frozen towers are embedded once."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from catalog_search.evaluation import caption_positives
from catalog_search.models.encode import encode, image_batch
from catalog_search.models.towers import find_towers, project
from catalog_search.shards import decode_image, iter_samples


def load_split(shard_dir: Path, split: str) -> list[dict]:
    samples = list(iter_samples(shard_dir, split))
    if not samples:
        raise ValueError(f"{shard_dir}: split {split!r} has no samples; check shard.* params and the clean stage's rejects")
    return samples


class SplitEncoder:
    """Embeds a split's images and caption texts with the current model weights.

    Towers named in `frozen` are run once, without their projection, at construction; after
    that only the (trainable) projection runs on the cached features. Same result, a fraction
    of the compute, which is what makes linear_probe and the single-LoRA scenarios cheap.
    """

    def __init__(self, model: nn.Module, preprocess: Callable, tokenizer: Callable, samples: Sequence[dict],
                 frozen: set[str], device: torch.device, batch_size: int):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.batch_size = device, batch_size
        self.images = [s["image"] for s in samples]
        self.texts, self.image_to_text, self.text_to_image = caption_positives([s["captions"] for s in samples])
        self.towers = find_towers(model)
        # BERT-family towers pool with the attention mask, so trailing all-pad columns change
        # nothing and cost most of the compute (open_clip pads every text to context_length).
        # Towers that pool a fixed position (CLIP's EOT argmax is safe, SigLIP's last token is not)
        # keep their padding.
        self.trim_pad = tokenizer.tokenizer.pad_token_id if self.towers["text"].kind == "BertFamily" else None
        items = {"image": self.images, "text": self.texts}
        self.cache = {t: encode(model, t, items[t], self._input(t), batch_size, device, projected=False,
                                desc=f"cache frozen {t} features") for t in sorted(frozen)}

    def _input(self, tower: str) -> Callable:
        if tower == "image":
            return lambda batch: image_batch(self.preprocess, [decode_image(b) for b in batch], self.device)
        return self._tokens

    def _tokens(self, batch: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(batch))
        if self.trim_pad is not None:
            used = (tokens != self.trim_pad).any(0).nonzero()
            tokens = tokens[:, : int(used.max()) + 1]
        return tokens.to(self.device)

    def embed(self, tower: str, idx: Sequence[int]) -> torch.Tensor:
        """Embeddings (projected, not normalised) of images or texts `idx`, with autograd."""
        if tower in self.cache:
            return project(self.model, self.towers[tower], self.cache[tower][list(idx)].to(self.device))
        items = self.images if tower == "image" else self.texts
        x = self._input(tower)([items[i] for i in idx])
        return self.model.encode_image(x) if tower == "image" else self.model.encode_text(x)

    def sample_captions(self, idx: Sequence[int], rng: np.random.Generator) -> list[int]:
        """One caption per image, drawn at random (caption augmentation)."""
        ptr, ind = self.image_to_text.indptr, self.image_to_text.indices
        return [int(ind[rng.integers(ptr[i], ptr[i + 1])]) for i in idx]

    @torch.no_grad()
    def embed_all(self, tower: str) -> np.ndarray:
        n = len(self.images) if tower == "image" else len(self.texts)
        parts = [self.embed(tower, range(s, min(s + self.batch_size, n))).float().cpu()
                 for s in range(0, n, self.batch_size)]
        return torch.cat(parts).numpy()
