"""What a trained scenario leaves on disk, in formats other tools load without this project.

models/<scenario>/
  adapter/        peft format (adapter_config.json + adapter_model.safetensors), LoRA scenarios only
  trained.safetensors   the trained non-LoRA weights (projections, logit scale/bias; all of them for `full`)
  merged/         LoRA merged in: open_clip_config.json + open_clip_model.safetensors (+ tokenizer files,
                  + <model name>.json for open_clip.add_model_config); open_clip.create_model loads it
  model_card.json
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from catalog_search.core.adapters import ADAPTER, save_adapter
from catalog_search.io import write_json
from catalog_search.models.registry import ModelBundle

if TYPE_CHECKING:
    from peft.tuners.lora import LoraModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _tensors(state: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_model(out_dir: Path, bundle: ModelBundle, wrapper: LoraModel | None, card: dict) -> None:
    """Write every artefact of a trained scenario (LoRA is folded into `merged/`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = bundle.model
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    save_file(_tensors(trained), out_dir / "trained.safetensors")
    if wrapper is not None:
        save_adapter(out_dir / "adapter", model, wrapper.peft_config[ADAPTER])
        model = wrapper.merge_and_unload()
    merged = out_dir / "merged"
    merged.mkdir(exist_ok=True)
    save_file(_tensors(model.state_dict()), merged / "open_clip_model.safetensors")
    write_json(merged / "open_clip_config.json", bundle.config)
    write_json(merged / f"{bundle.name}.json", bundle.config["model_cfg"])
    if bundle.tokenizer_dir:
        for name in TOKENIZER_FILES:
            if (Path(bundle.tokenizer_dir) / name).exists():
                shutil.copy(Path(bundle.tokenizer_dir) / name, merged / name)
    write_json(out_dir / "model_card.json", card)

