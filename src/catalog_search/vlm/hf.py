"""The second model path: a Hugging Face image-text-to-text model (PaliGemma, SmolVLM, LLaVA, ...)
by name or folder (`vlm.language: hf:<name or path>`), LoRA on its language model's attention and
MLP projections. It keeps AttributeVLM's interface: `prefix` builds the input embeddings of image
+ prompt (the model's own vision tower and projector fill its image tokens), so training, free
generation and constrained decoding are the same code for both paths."""
from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from catalog_search.core.adapters import lora_config
from catalog_search.core.towers import LORA_TARGETS
from catalog_search.vlm.model import AttributeVLM


class HFVisionLM(AttributeVLM):
    def __init__(self, model: nn.Module, processor, prompt: str, image_size: int):
        nn.Module.__init__(self)
        self.lm = model
        image_token = getattr(processor, "image_token", "<image>")
        blank = Image.new("RGB", (image_size, image_size))
        ids = processor(images=[blank], text=[f"{image_token}{prompt.strip()}\n"], return_tensors="pt")["input_ids"][0]
        self.register_buffer("prompt_ids", ids, persistent=False)
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(image_token)

    def shared_prefix(self) -> torch.Tensor:
        """Nothing: the image tokens sit inside this model's prompt, so no part of it is the same for every image."""
        embeddings = self.lm.get_input_embeddings()
        return embeddings.weight.new_zeros(1, 0, embeddings.embedding_dim)

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """The prompt's embeddings with its image tokens replaced by the model's image features."""
        ids = self.prompt_ids.expand(len(pixels), -1)
        embeds = self.lm.get_input_embeddings()(ids)
        image = self.lm.get_image_features(pixel_values=pixels.to(self.lm.dtype))
        image = getattr(image, "pooler_output", image)  # transformers 5 returns a ModelOutput for some models
        image = torch.cat(list(image)) if isinstance(image, (list, tuple)) else image.reshape(-1, image.shape[-1])
        mask = (ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, image.to(embeds.dtype))


def load_hf(name: str, lora: dict | None):
    """(model with LoRA on the language model, processor); `lora` None: untuned."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(name)
    if lora is not None:
        targets = rf".*language_model.*\.({'|'.join(LORA_TARGETS['LlamaDecoder'][1])})"  # not the vision tower's q_proj/k_proj/...
        model = get_peft_model(model, lora_config(lora, targets))
    return model, AutoProcessor.from_pretrained(name)


def pixel_values(name: str, images: list[bytes], batch_size: int) -> torch.Tensor:
    """The model's own image preprocessing; the HF path's per-image inputs (its vision tower trains
    nothing but runs in every step, so nothing is cached beyond the pixels)."""
    import io

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(name).image_processor
    out = []
    for k in range(0, len(images), batch_size):
        pics = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[k:k + batch_size]]
        out.append(processor(pics, return_tensors="pt")["pixel_values"])
    return torch.cat(out)
