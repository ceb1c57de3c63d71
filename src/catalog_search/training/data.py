"""One split's images and captions, embedded by the model; frozen towers are embedded once."""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T

from catalog_search.core.device import autocast, eval_mode
from catalog_search.core.towers import Prefix, find_towers, project
from catalog_search.evaluation import caption_positives
from catalog_search.models.encode import by_length, encode, unsort
from catalog_search.shards import decode_image
from catalog_search.training.distributed import World, gather_rows


def trim_padding(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the columns that are padding in every row."""
    used = (tokens != pad_id).any(0).nonzero()
    return tokens[:, : int(used.max()) + 1]


def split_preprocess(preprocess: Callable) -> tuple[Callable, Callable]:
    """open_clip's transform as (PIL -> uint8 CHW tensor, float conversion + normalisation).

    Workers hand uint8 pixels over (a quarter of float32's bytes through shared memory and the
    host-to-device copy) and the device does the arithmetic: same numbers as ToTensor+Normalize.
    A transform of another shape stays whole.
    """
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
        return preprocess, lambda x: x
    normalize = steps[-1]
    return T.Compose([*steps[:-2], T.PILToTensor()]), lambda x: normalize(x.float().div_(255))


Rows = Optional[Sequence[int]]


class _Fetch(torch.utils.data.Dataset):
    """What DataLoader workers produce ahead of the step, per (image row, caption row) pair:
    decoded, cropped uint8 pixels and caption tokens; None for a side not asked for or cached."""

    def __init__(self, enc: "SplitEncoder"):
        self.images, self.texts, self.to_pixels, self.tokenizer = enc.images, enc.texts, enc.to_pixels, enc.tokenizer
        self.decode, self.tokenize = "image" not in enc.cache, "text" not in enc.cache

    def __getitem__(self, pair: tuple[int | None, int | None]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        i, t = pair
        pixels = self.to_pixels(decode_image(self.images[i])) if i is not None and self.decode else None
        tokens = self.tokenizer([self.texts[t]])[0] if t is not None and self.tokenize else None
        return pixels, tokens


def _collate(items: list[tuple]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    return tuple(None if col[0] is None else torch.stack(col) for col in zip(*items))


class SplitEncoder:
    """Embeds a split's images and caption texts with the current model weights.

    Towers named in `frozen` are run once, without their projection, at construction (`cache`
    off runs them every time, for the benchmark); after that only the (trainable) projection
    runs on the cached features. Same result, a fraction of the compute, which is what makes
    linear_probe and the single-LoRA scenarios cheap. A LoRA tower given in `prefix` is cached
    the same way up to its first adapted block: each step runs only the blocks that learn (its
    frozen blocks then run in eval mode: BERT's dropout there is off). Under data parallelism
    each rank computes its part of the cache and of `embed_all`, and the parts are gathered.
    """

    def __init__(self, model: nn.Module, preprocess: Callable, tokenizer: Callable, samples: Sequence[dict],
                 frozen: set[str], device: torch.device, batch_size: int, world: World = World(),
                 workers: int = 0, cache: bool = True, prefix: dict[str, Prefix] | None = None,
                 precision: str = "auto"):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.to_pixels, self.normalize = split_preprocess(preprocess)
        self.device, self.batch_size, self.world, self.workers = device, batch_size, world, workers
        self.precision = precision  # of the cached features: the training's
        self.images = [s["image"] for s in samples]
        self.texts, self.image_to_text, self.text_to_image = caption_positives([s["captions"] for s in samples])
        # variants and near-duplicate photos share a group (clean's dedupe); a product without one is its own
        self.groups = np.unique([str(s.get("group_id") or s.get("product_id") or i) for i, s in enumerate(samples)],
                                return_inverse=True)[1]
        self.towers = find_towers(model)
        # BERT-family towers pool with the attention mask, so trailing all-pad columns change
        # nothing and cost most of the compute (open_clip pads every text to context_length).
        # Towers that pool a fixed position (CLIP's EOT argmax is safe, SigLIP's last token is not)
        # keep their padding.
        self.trim_pad = tokenizer.tokenizer.pad_token_id if self.towers["text"].kind == "BertFamily" else None
        self.cache: dict[str, torch.Tensor] = {}
        self.prefix = prefix if cache and prefix else {}
        self.lengths: dict[str, torch.Tensor] = {}  # a cached text prefix's tokens per row (the rest is padding)
        for tower in sorted(frozen) if cache else []:
            items = self.images if tower == "image" else self.texts
            part = world.split(len(items))
            local = encode(model, tower, items[part], self._input(tower), batch_size, device, projected=False,
                           desc=f"cache frozen {tower} features", precision=precision)
            self.cache[tower] = gather_rows(local, len(items), world)
        for tower, cut in sorted(self.prefix.items()):
            items = self.images if tower == "image" else self.texts
            part = world.split(len(items))
            self.cache[tower] = gather_rows(self._prefix_states(tower, cut, items[part]), len(items), world)
            if tower == "text":
                self.lengths[tower] = (self.cache[tower] != 0).any(-1).sum(1)

    @torch.no_grad()
    def _prefix_states(self, tower: str, cut: Prefix, items: Sequence) -> torch.Tensor:
        """`cut.run` over items in batches (texts by length); text states padded back to the
        tokenizer's width."""
        order = by_length(items)
        items = items if order is None else [items[i] for i in order]
        out = []
        with eval_mode(self.model), autocast(self.device, self.precision):
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                if tower == "image":
                    out.append(cut.run(self._input("image")(batch)).float().cpu())
                    continue
                tokens = self.tokenizer(list(batch))
                states = cut.run(self._token_rows(tokens)).float().cpu()
                out.append(F.pad(states, (0, 0, 0, tokens.shape[1] - states.shape[1])))
        return unsort(torch.cat(out), order) if out else torch.empty(0)

    def _input(self, tower: str) -> Callable:
        if tower == "image":
            return lambda batch: self._pixels(torch.stack([self.to_pixels(decode_image(b)) for b in batch]))
        return self._tokens

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x.to(self.device, non_blocking=True))

    def _tokens(self, batch: Sequence[str]) -> torch.Tensor:
        return self._token_rows(self.tokenizer(list(batch)))

    def _token_rows(self, tokens: torch.Tensor) -> torch.Tensor:
        return (trim_padding(tokens, self.trim_pad) if self.trim_pad is not None else tokens).to(self.device)

    def inputs(self, tower: str, idx: Sequence[int]) -> torch.Tensor:
        """What `embed_inputs` takes for rows `idx`: cached features, pixels or tokens."""
        if tower in self.cache:
            rows = list(idx)
            x = self.cache[tower][rows]
            if tower in self.lengths:  # a text prefix: only the columns some row of the batch uses
                x = x[:, : int(self.lengths[tower][rows].max())]
            return x.to(self.device)
        items = self.images if tower == "image" else self.texts
        return self._input(tower)([items[i] for i in idx])

    def embed_inputs(self, tower: str, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (projected, not normalised) with autograd; `x` may be a slice of `inputs`."""
        if tower in self.cache:
            return project(self.model, self.towers[tower], self.prefix[tower].rest(x) if tower in self.prefix else x)
        return self.model.encode_image(x) if tower == "image" else self.model.encode_text(x)

    def embed(self, tower: str, idx: Sequence[int]) -> torch.Tensor:
        return self.embed_inputs(tower, self.inputs(tower, idx))

    def load(self, plan: Sequence[tuple[Rows, Rows]]) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """(`inputs("image", a)`, `inputs("text", b)`) for each (a, b) of `plan`; a side given as
        None comes back None. With `workers`, decoding and tokenising run in DataLoader
        processes ahead of the consumer (open_clip's tokenizer is pure Python: a quarter of a
        ViT-B-32 step on an H100 when done in the training loop)."""
        if self.workers == 0:
            for a, b in plan:
                yield (None if a is None else self.inputs("image", a)), (None if b is None else self.inputs("text", b))
            return
        pairs = [list(zip(a if a is not None else [None] * len(b), b if b is not None else [None] * len(a)))
                 for a, b in plan]
        # its own generator: seeding workers must not draw from the global RNG (dropout, resume)
        loader = torch.utils.data.DataLoader(_Fetch(self), batch_sampler=pairs, num_workers=self.workers,
                                             collate_fn=_collate, pin_memory=self.device.type == "cuda",
                                             prefetch_factor=4, generator=torch.Generator())
        for (pixels, tokens), (a, b) in zip(loader, plan):
            image = None if a is None else self._pixels(pixels) if pixels is not None else self.inputs("image", a)
            text = None if b is None else self._token_rows(tokens) if tokens is not None else self.inputs("text", b)
            yield image, text

    def sample_captions(self, idx: Sequence[int], rng: np.random.Generator) -> list[int]:
        """One caption per image, drawn at random (caption augmentation)."""
        ptr, ind = self.image_to_text.indptr, self.image_to_text.indices
        return [int(ind[rng.integers(ptr[i], ptr[i + 1])]) for i in idx]

    def positives(self, rows: np.ndarray, captions: np.ndarray, by: str) -> np.ndarray:
        """Which captions of a batch match which of its images (bool, rows x captions): a caption
        whose text is one of the image's captions (`by` "caption"), or also one of the same group
        ("caption_group"). Its own caption always matches; the contrastive loss's positives."""
        ptr, ind = self.image_to_text.indptr, self.image_to_text.indices
        mine = np.concatenate([ind[ptr[r]:ptr[r + 1]] for r in rows])  # every caption of every row ...
        owner = np.repeat(np.arange(len(rows)), ptr[rows + 1] - ptr[rows])  # ... and its row in the batch
        order = np.argsort(captions, kind="stable")
        lo, hi = (np.searchsorted(captions[order], mine, side) for side in ("left", "right"))
        out = np.zeros((len(rows), len(captions)), bool)
        for k in np.flatnonzero(hi > lo):  # only the captions some column carries
            out[owner[k], order[lo[k]:hi[k]]] = True
        if by == "caption_group":
            out |= self.groups[rows][:, None] == self.groups[rows][None, :]
        return out

    @torch.no_grad()
    def embed_all(self, tower: str) -> np.ndarray:
        if tower == "image":
            return self.embed_rows(tower, np.arange(len(self.images)))
        order = by_length(self.texts)
        return unsort(torch.from_numpy(self.embed_rows(tower, np.asarray(order, dtype=int))), order).numpy()

    @torch.no_grad()
    def embed_rows(self, tower: str, rows: np.ndarray) -> np.ndarray:
        """Embeddings of `rows` of a tower's items; under data parallelism each rank embeds its part
        and every rank gets all of them, identical."""
        part = self.world.split(len(rows))
        batches = [rows[s:min(s + self.batch_size, part.stop)].tolist() for s in range(part.start, part.stop, self.batch_size)]
        plan = [(b, None) if tower == "image" else (None, b) for b in batches]
        parts = [self.embed_inputs(tower, x if tower == "image" else y).float() for x, y in self.load(plan)]
        return gather_rows(torch.cat(parts).cpu(), len(rows), self.world).numpy()
