"""Assembling an AttributeVLM, the one place that does: for training (fresh LoRA, fresh projector),
for the untuned baseline, and from a saved folder (adapter merged, projector loaded). Both model
paths: the offline language model with the project's projector, and `language: hf:<name>`
(`hf.py`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from catalog_search.core.adapters import ADAPTER, lora_config, save_adapter
from catalog_search.core.labels import LabelSet
from catalog_search.core.names import parse_name
from catalog_search.core.towers import LORA_TARGETS
from catalog_search.vlm.language import load_language_model, load_tokenizer
from catalog_search.vlm.model import AttributeVLM
from catalog_search.vlm.template import JsonTemplate

DECODER_TARGETS = LORA_TARGETS["LlamaDecoder"][1]


def template_for(tokenizer, labels: LabelSet) -> JsonTemplate:
    return JsonTemplate(tokenizer, {a: enc.classes for a, enc in labels.labels.items()})


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as plain text after the image tokens. Not the chat template: SmolLM2's adds a
    ~30-token system turn to every sequence, which doubles the cost of a CPU step."""
    return tokenizer(prompt.strip() + "\n", add_special_tokens=False)["input_ids"]


def add_lora(lm: nn.Module, cfg: dict) -> nn.Module:
    """LoRA on every attention and MLP projection of the language model."""
    from peft import get_peft_model

    return get_peft_model(lm, lora_config(cfg, list(DECODER_TARGETS)))


def build(cfg: dict, labels: LabelSet, feature_dim: int, cache_dir: Path, tune: bool = True,
          adapter: Path | None = None) -> tuple[AttributeVLM, JsonTemplate, object]:
    """(model, template, tokenizer) for the settings `cfg`: the base language model (its first and
    last `layers`) with fresh LoRA (`tune`), with a saved `adapter` merged in, or untouched; a fresh
    projector. `language: hf:<name or path>`: the HF image-text-to-text model instead."""
    from peft import PeftModel

    if parse_name(cfg["language"], "vlm.language").scheme == "hf":
        from catalog_search.vlm.hf import HFVisionLM, load_hf

        hf, processor = load_hf(parse_name(cfg["language"]).value, cfg["lora"] if tune else None)
        if adapter is not None:
            hf = PeftModel.from_pretrained(hf, adapter).merge_and_unload()
        model = HFVisionLM(hf, processor, cfg["prompt"], cfg["image_size"])
        return model, template_for(processor.tokenizer, labels), processor.tokenizer
    tokenizer = load_tokenizer(cfg["language"], cache_dir)
    torch.manual_seed(cfg["seed"])  # a tiny test model is random: the same seed rebuilds the same base
    lm = load_language_model(cfg["language"], cache_dir, len(tokenizer), cfg["layers"])
    # the first load converts the GGUF, which draws random numbers: LoRA and the projector must start
    # the same on a fresh machine as on one with the converted model cached
    torch.manual_seed(cfg["seed"])
    if tune:
        lm = add_lora(lm, cfg["lora"])
    elif adapter is not None:  # merged: no LoRA detour per layer at inference
        lm = PeftModel.from_pretrained(lm, adapter).merge_and_unload()
    template = template_for(tokenizer, labels)
    return AttributeVLM(lm, feature_dim, template, prompt_ids(tokenizer, cfg["prompt"])), template, tokenizer


def save_vlm(out: Path, model: AttributeVLM, labels: LabelSet, settings: dict) -> None:
    """projector.pt + the peft adapter + labels.json (the answer vocabulary) + vlm.json (settings)."""
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "heads"):  # the HF path's projector is part of the model, frozen
        torch.save({"trunk": model.trunk.state_dict(), "heads": model.heads.state_dict()}, out / "projector.pt")
    save_adapter(out / "adapter", model.lm, model.lm.peft_config[ADAPTER])
    labels.save(out / "labels.json")
    (out / "vlm.json").write_text(json.dumps(settings, indent=2))


def load_vlm(folder: Path, cache_dir: Path) -> tuple[AttributeVLM, JsonTemplate, LabelSet, dict, object]:
    """(model, template, labels, settings, tokenizer) of a saved VLM for inference."""
    settings = json.loads((folder / "vlm.json").read_text())
    labels = LabelSet.load(folder / "labels.json")
    model, template, tokenizer = build(settings, labels, settings.get("feature_dim", 0), cache_dir, tune=False,
                                       adapter=folder / "adapter")
    if (folder / "projector.pt").exists():
        saved = torch.load(folder / "projector.pt")
        model.trunk.load_state_dict(saved["trunk"])
        model.heads.load_state_dict(saved["heads"])
    return model.eval(), template, labels, settings, tokenizer
