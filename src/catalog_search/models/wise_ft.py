"""WiSE-FT (Wortsman et al., 2022, "Robust fine-tuning of zero-shot models"): the fine-tuned weights
interpolated with the zero-shot ones, theta(alpha) = (1 - alpha) * zero_shot + alpha * tuned.

Fine-tuning overspecialises; open_clip's maintainers point to this instead of a trainer flag. It
works on merged checkpoints, so a LoRA scenario (merged = base + BA) interpolates exactly its
merged delta: zero_shot + alpha * BA. alpha 0 is the zero-shot model, 1 the tuned one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

WEIGHTS = "open_clip_model.safetensors"


def interpolate(zero_shot: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Floating-point tensors interpolated; anything else (BatchNorm's step counter) from the tuned model."""
    if zero_shot.keys() != tuned.keys():
        diff = sorted(zero_shot.keys() ^ tuned.keys())[:5]
        raise ValueError(f"WiSE-FT needs two checkpoints of one architecture; tensors in only one of them: {diff}")
    out = {}
    for name, t in tuned.items():
        z = zero_shot[name]
        if z.shape != t.shape:
            raise ValueError(f"WiSE-FT: tensor {name} is {tuple(z.shape)} zero-shot but {tuple(t.shape)} tuned")
        out[name] = torch.lerp(z.float(), t.float(), alpha).to(t.dtype) if t.is_floating_point() else t
    return out


def load_pair(zero_shot_dir: Path, tuned_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The two merged checkpoints' tensors (models/zero_shot/merged, models/<scenario>/merged)."""
    return load_file(str(Path(zero_shot_dir) / WEIGHTS)), load_file(str(Path(tuned_dir) / WEIGHTS))
