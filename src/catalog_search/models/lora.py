"""LoRA through peft, and which parameters each scenario trains."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from catalog_search.core import adapters
from catalog_search.core.adapters import ADAPTER, lora_target_regex
from catalog_search.core.towers import find_towers, tower_param_names
from catalog_search.models.scenarios import Scenario

if TYPE_CHECKING:
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel


def scenario_lora_config(model: nn.Module, scenario: Scenario, lora: dict) -> LoraConfig | None:
    """LoRA in the towers the scenario adapts (their last `<tower>_last_blocks` blocks); None: no LoRA."""
    towers = find_towers(model)
    patterns = [lora_target_regex(model, towers[t].blocks_path, towers[t].lora_targets, lora.get(f"{t}_last_blocks"))
                for t in ("image", "text") if scenario.tower_mode(t) == "lora"]
    return adapters.lora_config(lora, "|".join(f"(?:{p})" for p in patterns)) if patterns else None


def projection_param_names(model: nn.Module) -> list[str]:
    towers = find_towers(model).values()
    heads = tuple(t.proj_name for t in towers)
    return [n for n, _ in model.named_parameters()
            if n.startswith(heads) or n in ("logit_scale", "logit_bias")]


def apply_scenario(model: nn.Module, scenario: Scenario, lora: dict) -> LoraModel | None:
    """Freeze, inject LoRA and unfreeze in place; returns the peft wrapper when LoRA is used."""
    config, wrapper = scenario_lora_config(model, scenario, lora), None
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
