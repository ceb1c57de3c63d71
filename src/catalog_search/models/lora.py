"""LoRA through peft, and which parameters each scenario trains."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch.nn as nn

from catalog_search.models.scenarios import Scenario
from catalog_search.models.towers import find_towers, tower_param_names

if TYPE_CHECKING:  # peft costs ~5 s to import: only scenarios with LoRA load it
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

ADAPTER = "default"


def lora_target_regex(model: nn.Module, blocks_path: str, targets: tuple[str, ...], last_blocks: int | None) -> str:
    """A regex (peft matches it against full module names) for the `targets` inside the blocks
    at `blocks_path`.

    `last_blocks` limits LoRA to the final N blocks: backward then stops there, which is what
    makes LoRA on a convolutional tower affordable on a CPU.
    """
    n = len(model.get_submodule(blocks_path))
    blocks = range(n - last_blocks if last_blocks else 0, n)
    return rf"{re.escape(blocks_path)}\.({'|'.join(map(str, blocks))})\.(.*\.)?({'|'.join(targets)})"


def lora_config(model: nn.Module, scenario: Scenario, lora: dict) -> LoraConfig | None:
    towers = find_towers(model)
    patterns = [lora_target_regex(model, towers[t].blocks_path, towers[t].lora_targets, lora.get(f"{t}_last_blocks"))
                for t in ("image", "text") if scenario.tower_mode(t) == "lora"]
    if not patterns:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules="|".join(f"(?:{p})" for p in patterns), bias="none")


def projection_param_names(model: nn.Module) -> list[str]:
    towers = find_towers(model).values()
    heads = tuple(t.proj_name for t in towers)
    return [n for n, _ in model.named_parameters()
            if n.startswith(heads) or n in ("logit_scale", "logit_bias")]


def apply_scenario(model: nn.Module, scenario: Scenario, lora: dict) -> LoraModel | None:
    """Freeze, inject LoRA and unfreeze in place; returns the peft wrapper when LoRA is used."""
    config, wrapper = lora_config(model, scenario, lora), None
    if config:
        from peft.tuners.lora import LoraModel

        wrapper = LoraModel(model, config, ADAPTER)  # injects into `model` itself
    names = set(projection_param_names(model)) if scenario.projections else set()
    for tower in find_towers(model).values():
        if scenario.tower_mode(tower.name) == "full":
            names.update(tower_param_names(model, tower))
    for name, param in model.named_parameters():
        param.requires_grad = name in names or "lora_" in name
    return wrapper


def trainable_summary(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return {"trainable_params": trainable, "lora_params": lora, "base_params": total}
