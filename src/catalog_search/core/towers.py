"""Where things are inside each kind of tower: blocks, LoRA targets, projection.

The table is data; `find_towers` only decides which row fits. Splitting a tower into
features + projection lets a frozen tower's features be computed once and reused; splitting it
after its first blocks (`frozen_prefix`) does the same for the blocks LoRA leaves untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Iterator

import torch
import torch.nn as nn

# network kind (a trunk class name, or LlamaDecoder: the VLM's language models) ->
# (block list path relative to its root, LoRA target module names)
LORA_TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "EfficientNet": ("trunk.blocks", ("conv_pw", "conv_pwl")),          # timm EfficientNet: 1x1 convs
    "TimmVisionTransformer": ("trunk.blocks", ("qkv", "proj", "fc1", "fc2")),
    "OpenClipTransformer": ("transformer.resblocks", ("attn", "c_fc", "c_proj")),  # attn = peft's MHA LoRA
    "BertFamily": ("transformer.encoder.layer", ("query", "key", "value", "dense")),
    "ViTModel": ("trunk.layers", ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")),  # transformers 5.x
    "LlamaDecoder": ("model.layers", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
}


@dataclass(frozen=True)
class Tower:
    name: str                 # "image" or "text"
    root: str                 # module path of the tower in the CLIP model ("" = top level)
    kind: str                 # a key of LORA_TARGETS
    proj_owner: str           # module path that holds the projection
    proj_attr: str            # attribute name of the projection (a Module or a Parameter)
    param_prefixes: tuple[str, ...]  # parameter name prefixes that belong to this tower

    def path(self, rel: str) -> str:
        return f"{self.root}.{rel}" if self.root else rel

    @property
    def blocks_path(self) -> str:
        return self.path(LORA_TARGETS[self.kind][0])

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return LORA_TARGETS[self.kind][1]

    @property
    def proj_name(self) -> str:
        return f"{self.proj_owner}.{self.proj_attr}" if self.proj_owner else self.proj_attr


def _image_tower(model: nn.Module) -> Tower:
    visual = model.visual
    kind = type(visual).__name__
    if kind == "TimmModel":
        trunk = type(visual.trunk).__name__
        kind = "TimmVisionTransformer" if trunk == "VisionTransformer" else trunk
        return Tower("image", "visual", kind, "visual", "head", ("visual.",))
    if kind == "VisionTransformer":
        return Tower("image", "visual", "OpenClipTransformer", "visual", "proj", ("visual.",))
    raise NotImplementedError(f"image tower {kind} has no row in catalog_search.core.towers")


def _text_tower(model: nn.Module) -> Tower:
    if hasattr(model, "text"):  # CustomTextCLIP: the text tower is a submodule
        kind = type(model.text).__name__
        if kind == "HFTextEncoder":
            return Tower("text", "text", "BertFamily", "text", "proj", ("text.",))
        return Tower("text", "text", "OpenClipTransformer", "text", "text_projection", ("text.",))
    # plain CLIP: the text tower's parts sit at the top level
    return Tower("text", "", "OpenClipTransformer", "", "text_projection",
                 ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection"))


def find_towers(model: nn.Module) -> dict[str, Tower]:
    return {"image": _image_tower(model), "text": _text_tower(model)}


def tower_param_names(model: nn.Module, tower: Tower) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(tower.param_prefixes)]


def _owner(model: nn.Module, tower: Tower) -> nn.Module:
    return model.get_submodule(tower.proj_owner) if tower.proj_owner else model


@contextmanager
def projection_removed(model: nn.Module, tower: Tower) -> Iterator[None]:
    """Run the tower without its projection.

    open_clip's text towers skip a `text_projection` that is None (a Linear one, as in SigLIP2,
    included: anything else is matmul'd); timm and HF towers call their `head`/`proj` module, so
    those become Identity.
    """
    owner = _owner(model, tower)
    saved = getattr(owner, tower.proj_attr)
    module_called = isinstance(saved, nn.Module) and tower.proj_attr != "text_projection"
    setattr(owner, tower.proj_attr, nn.Identity() if module_called else None)
    try:
        yield
    finally:
        setattr(owner, tower.proj_attr, saved)


def project(model: nn.Module, tower: Tower, features: torch.Tensor) -> torch.Tensor:
    """Apply the tower's projection to features computed with `projection_removed`."""
    proj = getattr(_owner(model, tower), tower.proj_attr)
    if proj is None:
        return features
    return proj(features) if isinstance(proj, nn.Module) else features @ proj


@dataclass(frozen=True)
class Prefix:
    """A tower cut after its first `blocks` blocks: `run` maps the tower's input to the states
    there (frozen: computed once), `rest` maps those states to the features before the
    projection. Text states are zero past each text's end (padding), which is how `rest`
    finds its attention mask again."""
    blocks: int
    run: Callable[[torch.Tensor], torch.Tensor]
    rest: Callable[[torch.Tensor], torch.Tensor]


def _efficientnet_prefix(visual: nn.Module, k: int) -> Prefix:
    trunk = visual.trunk  # timm EfficientNet: conv_stem, bn1, blocks, conv_head, bn2, then pooling
    return Prefix(k, lambda x: trunk.blocks[:k](trunk.bn1(trunk.conv_stem(x))),
                  lambda h: trunk.forward_head(trunk.bn2(trunk.conv_head(trunk.blocks[k:](h)))))


def _bert_prefix(text: nn.Module, k: int) -> Prefix | None:
    from transformers.masking_utils import create_bidirectional_mask

    bert = text.transformer
    if getattr(bert, "pooler", None) is not None:  # cls_pooler reads BERT's own pooling layer: not split here
        return None

    def layers(hidden: torch.Tensor, mask: torch.Tensor, span: slice) -> torch.Tensor:
        attention = create_bidirectional_mask(config=bert.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in bert.encoder.layer[span]:
            hidden = layer(hidden, attention)
        return hidden

    def run(tokens: torch.Tensor) -> torch.Tensor:  # embeddings and the first k layers only
        mask = (tokens != text.config.pad_token_id).long()
        return layers(bert.embeddings(input_ids=tokens), mask, slice(0, k)) * mask[..., None]

    def rest(hidden: torch.Tensor) -> torch.Tensor:
        mask = (hidden != 0).any(-1).long()
        return text.pooler(SimpleNamespace(last_hidden_state=layers(hidden, mask, slice(k, None))), mask)

    return Prefix(k, run, rest)


PREFIXES: dict[str, Callable[[nn.Module, int], Prefix | None]] = {
    "EfficientNet": _efficientnet_prefix, "BertFamily": _bert_prefix}


def frozen_prefix(model: nn.Module, tower: Tower, last_blocks: int | None) -> Prefix | None:
    """The part of a LoRA tower below its last `last_blocks` blocks (None where LoRA is in every
    block or the tower kind has no split in PREFIXES)."""
    n = len(model.get_submodule(tower.blocks_path))
    if not last_blocks or last_blocks >= n or tower.kind not in PREFIXES:
        return None
    return PREFIXES[tower.kind](model.get_submodule(tower.root), n - last_blocks)
