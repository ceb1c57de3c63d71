"""The hierarchical attribute classifier: a shared image backbone and one head per attribute.

A head sees the image features plus the predicted class probabilities of the attributes it
conditions on (its parents), so article type is predicted knowing what the category head
thinks: the seed system's levels (gender/category -> subcategory -> article type). The heads
run in the order params list them; with `hierarchy` off every head sees the features alone,
which is the ablation that shows what the conditioning buys.

models/attributes/
  config.json          backbone, image size, heads, mode, LoRA: what `load_classifier` rebuilds
  labels.json          the label encoders (classes, counts, class weights, parent/child pairs)
  trained.safetensors  every trained tensor (heads + LoRA; the whole model for mode `full`)
  adapter/             the backbone's LoRA in peft format, for use without this project
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from peft.tuners.lora import LoraModel
from safetensors.torch import load_file, save_file

from catalog_search.attributes import MODES
from catalog_search.core import adapters
from catalog_search.core.adapters import ADAPTER, lora_target_regex, save_adapter, train_except_batchnorm
from catalog_search.core.backbones import Backbone, build_backbone
from catalog_search.core.labels import LabelSet
from catalog_search.io import atomic_path, write_json
from catalog_search.params import check_choice

if TYPE_CHECKING:
    from peft import LoraConfig


def head(inputs: int, hidden: int, dropout: float, classes: int) -> nn.Module:
    if not hidden:
        return nn.Linear(inputs, classes)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


class AttributeClassifier(nn.Module):
    def __init__(self, backbone: Backbone, labels: LabelSet, hidden: int, dropout: float, hierarchy: bool):
        super().__init__()
        self.backbone = backbone
        n = {a: len(e.classes) for a, e in labels.labels.items()}
        self.parents = {a: list(p or []) if hierarchy else [] for a, p in labels.heads.items()}
        dim = backbone.feature_dim()
        self.heads = nn.ModuleDict({a: head(dim + sum(n[p] for p in ps), hidden, dropout, n[a])
                                    for a, ps in self.parents.items()})

    def classify(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute from backbone features (cached features skip the backbone)."""
        logits: dict[str, torch.Tensor] = {}
        for name, layer in self.heads.items():
            parts = [features, *(logits[p].softmax(-1) for p in self.parents[name])]
            logits[name] = layer(torch.cat(parts, -1))
        return logits

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(self.backbone(pixels))


def backbone_lora_config(backbone: Backbone, lora: dict) -> LoraConfig:
    """LoRA in the backbone's last `lora.last_blocks` blocks (the towers table says which modules)."""
    target = lora_target_regex(backbone, backbone.blocks_path, backbone.lora_targets, lora.get("last_blocks"))
    return adapters.lora_config(lora, rf"backbone\.{target}")


def prepare(model: AttributeClassifier, mode: str, lora: dict) -> LoraModel | None:
    """Freeze what `mode` keeps fixed and inject LoRA (in place); the heads always train."""
    check_choice("attributes.mode", mode, MODES)
    wrapper = LoraModel(model, backbone_lora_config(model.backbone, lora), ADAPTER) if mode == "lora" else None
    for name, param in model.named_parameters():
        param.requires_grad = mode == "full" or name.startswith("heads.") or "lora_" in name
    return wrapper


def set_train_mode(model: AttributeClassifier, mode: str) -> None:
    """Heads and LoRA dropout train; a frozen backbone keeps its BatchNorm statistics (train mode
    would overwrite the pretrained running means with this catalog's) unless mode is `full`."""
    model.train()
    if mode != "full":
        train_except_batchnorm(model.backbone.modules())


def save_classifier(out_dir: Path, model: AttributeClassifier, wrapper: LoraModel | None, labels: LabelSet,
                    config: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    full = config["mode"] == "full"  # BatchNorm statistics moved too
    state = {n: t for n, t in model.state_dict().items()
             if full or n.startswith("heads.") or "lora_" in n}
    with atomic_path(out_dir / "trained.safetensors") as tmp:
        save_file({n: t.detach().contiguous().cpu() for n, t in state.items()}, str(tmp))
    if wrapper is not None:
        save_adapter(out_dir / "adapter", model, wrapper.peft_config[ADAPTER])
    labels.save(out_dir / "labels.json")
    write_json(out_dir / "config.json", config)


def load_classifier(model_dir: Path, models_root: Path = Path("models")) -> tuple[AttributeClassifier, LabelSet, dict]:
    """Rebuild the trained classifier (eval mode, CPU) from `save_classifier`'s files."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"no attribute classifier in {model_dir}: run `dvc repro train_attributes` first")
    config = json.loads((model_dir / "config.json").read_text())
    labels = LabelSet.load(model_dir / "labels.json")
    backbone = build_backbone(config["backbone"], config["image_size"], models_root)
    # dropout is inert in eval mode; classifiers saved before it was a param lack the key
    model = AttributeClassifier(backbone, labels, config["head_hidden"], config.get("head_dropout", 0.0),
                                config["hierarchy"])
    if config["mode"] == "lora":
        LoraModel(model, backbone_lora_config(model.backbone, config["lora"]), ADAPTER)
    missing, unexpected = model.load_state_dict(load_file(model_dir / "trained.safetensors"), strict=False)
    if unexpected or any(n.startswith("heads.") or "lora_" in n for n in missing):
        raise RuntimeError(f"{model_dir}/trained.safetensors does not fit its config.json: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), labels, config
