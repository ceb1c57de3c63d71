"""Export a merged open_clip model to ONNX, so a serving process embeds queries without torch.

out_dir/
  image.onnx      pixels float32 [N, 3, H, W] -> embedding float32 [N, D], L2-normalised in the graph
  text.onnx       input_ids int64 [N, L] -> embedding [N, D]; open_clip's HFTextEncoder derives its
                  attention mask from the pad id, and that comparison is in the graph, so ids are the
                  only input (L is dynamic: the encoder drops all-pad columns when pooling ignores them)
  tokenizer.json  the tokenizer transformers actually runs (its backend, serialised), + the other files
  encoder.json    preprocessing, tokenisation, model fingerprint: all encoders.OnnxEncoder reads

Only Hugging Face fast tokenizers export: open_clip's BPE SimpleTokenizer (ViT-B-32, `tiny`) has no
torch-free twin here, so such models are served with the torch encoder.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import open_clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder, MeanPooler
from open_clip.tokenizer import HFTokenizer, _clean_lower, _clean_whitespace
from PIL import Image
from tokenizers import Tokenizer

from catalog_search.index import file_fingerprint
from catalog_search.io import write_json
from catalog_search.models.export import TOKENIZER_FILES
from catalog_search.serving.encoders import ENCODER_JSON, OnnxEncoder

OPSET = 17
MIN_COSINE = 0.9999
# Padding, truncation, case, accents, an HTML entity, odd spaces, the empty string.
PROBE_TEXTS = ["red summer dress", "Women's BLUE Denim Jacket &amp; belt", "  café\tcrème   sneakers ", "",
               "navy wool coat with a detachable hood, two pockets and a long zip " * 4]
_CLEAN = {_clean_whitespace: "whitespace", _clean_lower: "lower"}


class _Normalized(nn.Module):
    """One tower with the L2 normalisation inside, so the graph is the whole query path."""

    def __init__(self, model: nn.Module, tower: str):
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encode = self.model.encode_image if self.tower == "image" else self.model.encode_text
        return F.normalize(encode(x), dim=-1)


@contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """A temp folder beside `path`, swapped in only if the block succeeds: a failed export leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; a serving process may run as another user
    try:
        yield tmp
        if path.exists():  # a folder cannot be renamed onto a full one: move the old aside first
            old = tmp.with_suffix(".old")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _text_spec(merged_dir: Path, tokenizer: Callable) -> dict:
    """How OnnxEncoder reproduces open_clip's HFTokenizer; ValueError for what it cannot."""
    if not (isinstance(tokenizer, HFTokenizer) and hasattr(tokenizer.tokenizer, "backend_tokenizer")):
        raise ValueError(f"{merged_dir}: onnx export needs a Hugging Face tokenizer (tokenizer.json); this model uses "
                         f"open_clip's {type(tokenizer).__name__}. Serve it with the torch encoder instead "
                         "(load_encoder('torch', models/<scenario>/merged)).")
    clean = _CLEAN.get(tokenizer.clean_fn)
    if tokenizer.tokenizer_mode or clean is None:
        raise ValueError(f"{merged_dir}: tokenizer_mode={tokenizer.tokenizer_mode!r} / "
                         f"clean={tokenizer.clean_fn.__name__} are not re-implemented for onnx serving; "
                         "serve this model with the torch encoder instead.")
    hf = tokenizer.tokenizer
    return {"file": "text.onnx", "input": "input_ids", "tokenizer": "tokenizer.json",
            "context_length": tokenizer.context_length, "clean": clean,
            "pad_id": hf.pad_token_id, "pad_token": hf.pad_token, "pad_type_id": hf.pad_token_type_id,
            "padding_side": hf.padding_side, "truncation_side": hf.truncation_side,
            # [CLS] ... [SEP] come from tokenizer.json's post-processor; sep_id is used by strip_sep_token
            "cls_id": hf.cls_token_id, "sep_id": hf.sep_token_id, "strip_sep_token": tokenizer.strip_sep_token}


def _pools_with_mask(model: nn.Module, text: dict) -> bool:
    """True when trailing all-pad columns cannot change the embedding (mask-aware pooling of a BERT-like tower)."""
    tower = getattr(model, "text", None)
    pools = (MeanPooler, ClsPooler, ClsLastHiddenStatePooler)
    return (isinstance(tower, HFTextEncoder) and isinstance(tower.pooler, pools)
            and tower.config.pad_token_id == text["pad_id"] and text["padding_side"] == "right")


def _image_spec(cfg: dict) -> dict:
    """open_clip's eval transform settings, resolved the way image_transform resolves them."""
    size = cfg["size"]
    triple = lambda v: [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)] * 3
    return {"file": "image.onnx", "input": "pixels", "size": [size, size] if isinstance(size, int) else list(size),
            "mean": triple(cfg["mean"]), "std": triple(cfg["std"]),
            "interpolation": "bilinear" if cfg["interpolation"] == "bilinear" else "bicubic",
            "resize_mode": cfg["resize_mode"] or "shortest", "fill_color": cfg["fill_color"]}


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, axes: dict[int, str]) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings flag Python branches frozen at the example's shapes; _check proves the graph right.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: dynamo needs onnxscript
        warnings.filterwarnings("ignore", "Exporting aten::index operator")  # a caveat for negative indices; none here
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[input_name], output_names=["embedding"],
                          dynamic_axes={input_name: axes, "embedding": {0: "batch"}})


def _write_tokenizer(merged_dir: Path, tokenizer: HFTokenizer, out: Path) -> None:
    """The merged dir's tokenizer files, with tokenizer.json replaced by the backend transformers built
    (it may differ from the file, e.g. normaliser options from tokenizer_config.json)."""
    for name in TOKENIZER_FILES:
        if (merged_dir / name).is_file():
            shutil.copy(merged_dir / name, out / name)
    backend = Tokenizer.from_str(tokenizer.tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()  # OnnxEncoder sets both from encoder.json, as transformers does per call
    backend.save(str(out / "tokenizer.json"))


def _check(onnx_dir: Path, model: nn.Module, preprocess: Callable, tokenizer: HFTokenizer) -> dict:
    """Token ids equal open_clip's and embeddings match torch's on probes, or the export fails."""
    enc = OnnxEncoder(onnx_dir)
    ids = tokenizer(PROBE_TEXTS)
    if not np.array_equal(enc.tokenize(PROBE_TEXTS), ids.numpy()):
        raise RuntimeError(f"onnx export: the tokenizers library's ids differ from open_clip's on {PROBE_TEXTS}")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((61, 97), (300, 40))]
    with torch.no_grad():
        text_ref = model.encode_text(ids, normalize=True).numpy()
        image_ref = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
    cos = {"text_min_cosine": float((enc.encode_text(PROBE_TEXTS) * text_ref).sum(1).min()),
           "image_min_cosine": float((enc.encode_image(images) * image_ref).sum(1).min())}
    if min(cos.values()) < MIN_COSINE:
        raise RuntimeError(f"onnx export does not match torch (needs cosine >= {MIN_COSINE}): {cos}")
    return cos


def export_onnx(merged_dir: Path, out_dir: Path) -> dict:
    """Write `out_dir` (see the module docstring) from a merged model; returns encoder.json's content."""
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    weights = merged_dir / "open_clip_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no merged model in {merged_dir}: run `dvc repro train@{merged_dir.parent.name}` first")
    name = f"local-dir:{merged_dir}"
    tokenizer = open_clip.get_tokenizer(name)
    text = _text_spec(merged_dir, tokenizer)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    text["trim_padding"] = _pools_with_mask(model, text)
    spec = {"model_fingerprint": file_fingerprint(weights), "opset": OPSET,
            "image": _image_spec(model.visual.preprocess_cfg), "text": text}
    with _atomic_dir(out_dir) as tmp:
        # eval() on the wrappers: the exporter restores the wrapper's mode onto the whole model afterwards
        image = _Normalized(model, "image").eval()
        pixels = torch.randn(2, 3, *spec["image"]["size"], generator=torch.Generator().manual_seed(0))
        _export(image, pixels, tmp / "image.onnx", "pixels", {0: "batch"})
        _export(_Normalized(model, "text").eval(), tokenizer(PROBE_TEXTS[:2]), tmp / "text.onnx", "input_ids",
                {0: "batch", 1: "tokens"})  # the example has padding, so the masked path is the traced one
        _write_tokenizer(merged_dir, tokenizer, tmp)
        with torch.no_grad():
            spec["embed_dim"] = int(image(pixels).shape[1])
        write_json(tmp / ENCODER_JSON, spec)
        spec["check"] = _check(tmp, model, preprocess, tokenizer)
        write_json(tmp / ENCODER_JSON, spec)
    return spec
