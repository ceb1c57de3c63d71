"""Reading a split and turning image bytes into model inputs: shared by every model family."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms as T

from catalog_search.shards import decode_image, iter_samples


def load_split(shard_dir: Path | str, split: str) -> list[dict]:
    """A split's samples from a shard folder or URL (s3://...: streamed through fsspec)."""
    samples = list(iter_samples(shard_dir, split))
    if not samples:
        raise ValueError(f"{shard_dir}: split {split!r} has no samples; check shard.* params and the clean stage's rejects")
    return samples


def image_transform(size: int, mean: Sequence[float], std: Sequence[float], augment: bool = False) -> Callable:
    """Resize + centre crop + normalise; `augment` adds horizontal flips, never colour changes
    (colour is a label)."""
    steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
    steps += [T.RandomHorizontalFlip()] if augment else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


class ImageRows(torch.utils.data.Dataset):
    """(pixels, targets) per row, decoded on the fly (in DataLoader workers when there are any)."""

    def __init__(self, images: Sequence[bytes], targets: np.ndarray, transform: Callable):
        self.images, self.targets, self.transform = images, torch.from_numpy(targets), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(decode_image(self.images[i])), self.targets[i]


def loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, workers: int, seed: int = 0):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       generator=torch.Generator().manual_seed(seed))
