"""AttributeVLM: a frozen image backbone, a trained projector into the language model's input
embeddings, and the language model with LoRA. The backbone is frozen, so its features are
computed once per image and training touches only the projector and the adapters."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from catalog_search.attributes.labels import LabelSet
from catalog_search.vlm.template import IGNORE, JsonTemplate

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class AttributeVLM(nn.Module):
    def __init__(self, lm: nn.Module, feature_dim: int, visual_tokens: int, prompt_ids: list[int]):
        super().__init__()
        hidden = lm.config.hidden_size
        self.lm, self.visual_tokens = lm, visual_tokens
        self.projector = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, hidden), nn.GELU(),
                                       nn.Linear(hidden, visual_tokens * hidden))
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids), persistent=False)

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """(B, visual_tokens + prompt, hidden): the image's tokens, then the prompt."""
        visual = self.projector(features).view(len(features), self.visual_tokens, -1)
        prompt = self.lm.get_input_embeddings()(self.prompt_ids).expand(len(features), -1, -1)
        return torch.cat([visual, prompt.to(visual.dtype)], 1)

    def forward(self, features: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token loss on the answer only; `ids`/`labels`/`mask` are right-padded."""
        prefix = self.prefix(features)
        embeds = torch.cat([prefix, self.lm.get_input_embeddings()(ids)], 1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long, device=ids.device), mask], 1)
        full = torch.cat([torch.full(prefix.shape[:2], IGNORE, device=ids.device), labels], 1)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=full).loss

    @torch.no_grad()
    def generate_text(self, features: torch.Tensor, tokenizer, max_new_tokens: int) -> list[str]:
        """Free greedy generation, batched (every prefix has the same length: no padding)."""
        prefix = self.prefix(features)
        out = self.lm.generate(inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long,
                                                                               device=prefix.device),
                               max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return tokenizer.batch_decode(out, skip_special_tokens=True)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt as plain text after the image tokens. Not the chat template: SmolLM2's adds a
    ~30-token system turn to every sequence, which doubles the cost of a CPU step."""
    return tokenizer(prompt.strip() + "\n", add_special_tokens=False)["input_ids"]


def add_lora(lm: nn.Module, cfg: dict) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(lm, LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                                         target_modules=LORA_TARGETS))


def save_vlm(out: Path, model: AttributeVLM, labels: LabelSet, settings: dict) -> None:
    """projector.pt + the peft adapter + labels.json (the answer vocabulary) + vlm.json (settings)."""
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "projector"):  # the HF path's projector is part of the model, frozen
        torch.save(model.projector.state_dict(), out / "projector.pt")
    model.lm.save_pretrained(out / "adapter")
    labels.save(out / "labels.json")
    (out / "vlm.json").write_text(json.dumps(settings, indent=2))


def load_vlm(folder: Path, cache_dir: Path) -> tuple[AttributeVLM, JsonTemplate, LabelSet, dict, object]:
    """(model, template, labels, settings, tokenizer) of a saved VLM: the base language model is
    rebuilt from its name, then the adapter is applied."""
    from peft import PeftModel

    from catalog_search.vlm.language import load_language_model, load_tokenizer

    s = json.loads((folder / "vlm.json").read_text())
    labels = LabelSet.load(folder / "labels.json")
    if s["language"].startswith("hf:"):
        from catalog_search.vlm.hf import HFVisionLM, load_hf

        hf, processor = load_hf(s["language"][3:], None)
        model = HFVisionLM(PeftModel.from_pretrained(hf, folder / "adapter"), processor, s["prompt"], s["image_size"])
        return model.eval(), template_for(processor.tokenizer, labels), labels, s, processor.tokenizer
    tokenizer = load_tokenizer(s["language"], cache_dir)
    torch.manual_seed(s["seed"])  # a tiny test model is random: the same seed rebuilds the same base
    lm = PeftModel.from_pretrained(load_language_model(s["language"], cache_dir, len(tokenizer)), folder / "adapter")
    model = AttributeVLM(lm, s["feature_dim"], s["visual_tokens"], prompt_ids(tokenizer, s["prompt"]))
    model.projector.load_state_dict(torch.load(folder / "projector.pt"))
    return model.eval(), template_for(tokenizer, labels), labels, s, tokenizer


def template_for(tokenizer, labels: LabelSet) -> JsonTemplate:
    return JsonTemplate(tokenizer, {a: enc.classes for a, enc in labels.labels.items()})
