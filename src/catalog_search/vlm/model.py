"""AttributeVLM: a frozen image backbone, a trained projector into the language model's input
embeddings, and the language model with LoRA. The backbone is frozen, so its features are
computed once per image and training touches only the projector and the adapters.

The projector makes one visual token per attribute, each a probabilistic token as in Ovis (Lu et
al. 2024): a softmax over the attribute's values (a tag head on an MLP of the image features)
mixing the language model's own embeddings of those values. A token therefore lies where the
model's words lie and reads as the value the image shows, so the language model's part is
copying it into the template, which a pretrained model does from a few dozen steps; and the
heads can be aligned first, with the language model out of the loop (train.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catalog_search.vlm.template import IGNORE, JsonTemplate


class AttributeVLM(nn.Module):
    """The sequence is [prompt][visual tokens][answer]: the prompt comes first so that its keys and
    values are the same for every image and extraction computes them once per batch."""

    def __init__(self, lm: nn.Module, feature_dim: int, template: JsonTemplate, prompt_ids: list[int]):
        super().__init__()
        hidden = lm.config.hidden_size
        self.lm, self.attributes = lm, template.attributes
        self.trunk = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, hidden), nn.GELU())
        self.heads = nn.ModuleDict({a: nn.Linear(hidden, len(template.values[a])) for a in self.attributes})
        embed = lm.get_input_embeddings().weight
        for a in self.attributes:  # each value's embedding: the mean of its tokens' (the model's own, frozen)
            words = [embed[ids].detach().mean(0) for ids in template.value_ids[a].values()]
            self.register_buffer(f"words_{a}", torch.stack(words), persistent=False)
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids), persistent=False)

    def tags(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each attribute's logits over its values (template order)."""
        h = self.trunk(features)
        return {a: head(h) for a, head in self.heads.items()}

    def shared_prefix(self) -> torch.Tensor:
        """(1, P, hidden): the input embeddings every sequence starts with (the prompt)."""
        return self.lm.get_input_embeddings()(self.prompt_ids)[None]

    def image_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """(B, attributes, hidden): what differs per image, after the shared prefix."""
        tags = self.tags(features)
        return torch.stack([tags[a].softmax(-1) @ getattr(self, f"words_{a}") for a in self.attributes], 1)

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """(B, P + visual tokens, hidden): everything before the answer."""
        visual = self.image_embeds(features)
        return torch.cat([self.shared_prefix().to(visual.dtype).expand(len(features), -1, -1), visual], 1)

    def forward(self, features: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Next-token loss on the answer only; `ids`/`labels`/`mask` are right-padded. The shared
        prefix runs once per batch (its keys and values repeated per row, gradients flowing back
        through the copies), and logits are computed at the answer's positions alone: the head is
        a fifth of SmolLM2's weights."""
        images = self.image_embeds(features)
        n, width = images.shape[:2]
        embeds = torch.cat([images, self.lm.get_input_embeddings()(ids).to(images.dtype)], 1)
        cache, start = shared_cache(self.lm, self.shared_prefix().to(images.dtype), n)
        mask = torch.cat([torch.ones(n, start + width, dtype=torch.long, device=ids.device), mask], 1)
        positions = torch.arange(start, start + embeds.shape[1], device=ids.device).expand(n, -1)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=cache is not None, logits_to_keep=ids.shape[1] + 1).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)

    @torch.no_grad()
    def generate_text(self, features: torch.Tensor, tokenizer, max_new_tokens: int) -> list[str]:
        """Free greedy generation, batched (every prefix has the same length: no padding)."""
        prefix = self.prefix(features)
        out = self.lm.generate(inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long,
                                                                               device=prefix.device),
                               max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return tokenizer.batch_decode(out, skip_special_tokens=True)


def shared_cache(lm: nn.Module, shared: torch.Tensor, rows: int):
    """(key/value cache of the shared prefix, one copy per row, or None when it is empty; its length)."""
    if not shared.shape[1]:
        return None, 0
    cache = lm(inputs_embeds=shared, use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_repeat_interleave(rows)
    return cache, shared.shape[1]


def quantized(model: nn.Module, quantize: str | None) -> nn.Module:
    """A copy for constrained decoding with every linear layer int8 (`quantize: int8`, PyTorch's
    dynamic quantization: ~1.3x on this CPU; null on a GPU), or the model itself. Constrained
    answers are unchanged (0.880 vs 0.881 mean accuracy on the demo's test split); free generation
    is not: its valid JSON fell from 0.995 to 0.976, so free generation runs the float model."""
    if quantize is None:
        return model
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
