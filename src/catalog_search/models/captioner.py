"""A generic captioner: what a photo shows, in words that owe nothing to the catalog.

The aligned start of the offline default (`pretrain` stage) needs image-text pairs whose text is
generic, as web alt-text is for a real CLIP: never the catalog's titles or its caption templates.
This captioner writes them from the image alone: the object is the ImageNet class that the
packaged EfficientNet-Lite0 classifier (the same weights as the default image tower) ranks first,
named by its WordNet lemma ("jersey", "running shoe"); the colour is the basic colour term that
most of the product's pixels are nearest to. On the real catalog the colour term is contained in
the product's own colour for 54% of photos (the mean pixel's colour: 28%, shading and prints pull
a mean towards grey and beige).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

# Basic colour terms (Berlin & Kay's eleven plus navy and beige, which catalogs use), as sRGB.
COLOR_NAMES: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20), "white": (245, 245, 245), "grey": (128, 128, 128), "red": (190, 30, 35),
    "orange": (235, 120, 30), "yellow": (235, 205, 50), "green": (40, 130, 60), "blue": (40, 95, 200),
    "navy": (25, 35, 90), "purple": (115, 50, 145), "pink": (235, 135, 175), "brown": (110, 70, 40),
    "beige": (215, 195, 160),
}
BACKGROUND = 235      # a pixel whose channels are all above this is studio background
MIN_FOREGROUND = 0.02  # below this share of foreground pixels the product itself is white


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..255, last axis) -> CIELAB, where distances roughly match perceived differences."""
    c = rgb / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz = xyz / np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PALETTE = _lab(np.array(list(COLOR_NAMES.values()), np.float64))


def color_name(image: Image.Image) -> str:
    """The colour term most foreground pixels are nearest to (in CIELAB)."""
    pixels = np.asarray(image.convert("RGB"), np.float64).reshape(-1, 3)
    foreground = pixels[(pixels < BACKGROUND).any(1)]
    if len(foreground) < MIN_FOREGROUND * len(pixels):
        return "white"
    nearest = ((_lab(foreground)[:, None, :] - _PALETTE[None]) ** 2).sum(-1).argmin(1)
    return list(COLOR_NAMES)[int(np.bincount(nearest, minlength=len(COLOR_NAMES)).argmax())]


def imagenet_lemmas() -> list[str]:
    """The first WordNet lemma of each ImageNet-1k class, in class order (timm ships the table)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


@dataclass
class Caption:
    label: str   # ImageNet lemma of the top class
    color: str   # a COLOR_NAMES key


class GenericCaptioner:
    """(label, colour) per image; `image_size` is the classifier's input side in pixels."""

    def __init__(self, image_size: int = 96, batch_size: int = 64, device: str | torch.device = "cpu"):
        import timm

        from catalog_search.core.packaged import load_efficientnet_lite0

        self.classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval().to(device)
        load_efficientnet_lite0(self.classifier)
        self.labels, self.image_size, self.batch_size, self.device = imagenet_lemmas(), image_size, batch_size, device

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        # EfficientNet-Lite's own preprocessing: pad to square on white, resize, scale to [-1, 1]
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        x = np.asarray(square.resize((self.image_size, self.image_size), Image.BICUBIC), np.float32)
        return torch.from_numpy(x / 127.5 - 1.0).permute(2, 0, 1)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[Caption]:
        out = []
        for start in tqdm(range(0, len(images), self.batch_size), desc="caption", unit="batch"):
            batch = images[start:start + self.batch_size]
            logits = self.classifier(torch.stack([self._pixels(im) for im in batch]).to(self.device))
            out += [Caption(self.labels[int(k)], color_name(im)) for k, im in zip(logits.argmax(1), batch)]
        return out
