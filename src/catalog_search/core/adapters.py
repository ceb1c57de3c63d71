"""LoRA and what trains, the same way for every model family: one peft config builder, one saver
(peft's own format, loadable without this project), one count of parameters, one train mode.

peft costs ~5 s to import, so it is imported inside the functions that need it: stages that
train no adapter never pay for it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch.nn as nn
from safetensors.torch import save_file

if TYPE_CHECKING:
    from peft import LoraConfig

ADAPTER = "default"  # peft's adapter name


def lora_target_regex(model: nn.Module, blocks_path: str, targets: Iterable[str], last_blocks: int | None) -> str:
    """A regex (peft matches it against full module names) for the `targets` inside the blocks
    at `blocks_path`.

    `last_blocks` limits LoRA to the final N blocks: backward then stops there, which is what
    makes LoRA on a convolutional tower affordable on a CPU.
    """
    n = len(model.get_submodule(blocks_path))
    blocks = range(n - last_blocks if last_blocks else 0, n)
    return rf"{re.escape(blocks_path)}\.({'|'.join(map(str, blocks))})\.(.*\.)?({'|'.join(targets)})"


def lora_config(lora: dict, targets: str | list[str], **extra) -> LoraConfig:
    """peft's LoraConfig from a params `lora` section (r, alpha, dropout) and where it goes (a
    regex over full module names, or a list of module name suffixes)."""
    from peft import LoraConfig

    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=targets,
                      bias="none", **extra)


def save_adapter(folder: Path, model: nn.Module, config: LoraConfig) -> None:
    """The adapter in peft's format (adapter_config.json + adapter_model.safetensors), so
    `PeftModel.from_pretrained` loads it without this project."""
    from peft import get_peft_model_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    save_file({n: t.detach().contiguous().cpu() for n, t in state.items()}, str(folder / "adapter_model.safetensors"))
    config.save_pretrained(str(folder))


def trainable_summary(model: nn.Module, **groups: str) -> dict[str, int]:
    """Parameter counts: trainable, LoRA, the base model's (LoRA excluded) and, per keyword, a
    group's (`head="heads."`: names with that prefix, LoRA excluded) as `<group>_params`."""
    named = list(model.named_parameters())
    out = {"trainable_params": sum(p.numel() for _, p in named if p.requires_grad),
           "lora_params": sum(p.numel() for n, p in named if "lora_" in n),
           "base_params": sum(p.numel() for n, p in named if "lora_" not in n)}
    out.update({f"{group}_params": sum(p.numel() for n, p in named if n.startswith(prefix) and "lora_" not in n)
                for group, prefix in groups.items()})
    return out


def train_except_batchnorm(modules: Iterable[nn.Module]) -> None:
    """Train mode (dropout, LoRA dropout) for `modules`, BatchNorm kept in eval: a frozen or
    LoRA-tuned base keeps its pretrained running statistics, which train mode would overwrite
    with this catalog's batches (only a fully trained network moves them)."""
    for m in modules:
        m.train(not isinstance(m, nn.modules.batchnorm._BatchNorm))
