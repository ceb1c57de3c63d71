"""Query encoders for a serving process: text and images in, L2-normalised float32 rows out.

`OnnxEncoder` runs the graphs `onnx_export.export_onnx` writes with onnxruntime and never imports
torch (a serving image without torch is a fraction of the size and starts in a second); it
re-implements open_clip's eval preprocessing and HF tokenisation step for step, so its inputs
equal open_clip's bit for bit. `TorchEncoder` is the same interface over the merged open_clip
model, for models that cannot be exported. Both are safe to call from several threads at once.
"""
from __future__ import annotations

import html
import threading
from pathlib import Path

import ftfy
import numpy as np
from PIL import Image, ImageOps

from catalog_search.io import read_json

ENCODER_JSON = "encoder.json"
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def clean_text(text: str, clean: str) -> str:
    """open_clip HFTokenizer's cleaning ('whitespace' or 'lower'): ftfy, HTML unescaped twice, spaces collapsed."""
    text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).strip()
    return text.lower() if clean == "lower" else text


def _resize_shortest(img: Image.Image, size: int, resample: int) -> Image.Image:
    """torchvision Resize(int): the short side becomes `size`, the long side is truncated, not rounded."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return img.resize((new_short, new_long) if w <= h else (new_long, new_short), resample)


def _resize_keep_ratio(img: Image.Image, size: tuple[int, int], longest: float, resample: int) -> Image.Image:
    """open_clip ResizeKeepRatio (no random scale/aspect): both sides divided by one ratio, rounded."""
    w, h = img.size
    ratio_h, ratio_w = h / size[0], w / size[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return img.resize((round(w / ratio), round(h / ratio)), resample)


def _center_crop(img: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    """torchvision center_crop / open_clip center_crop_or_pad: pad (left/top get the floor), then crop."""
    (ch, cw), (w, h) = size, img.size
    if cw > w or ch > h:
        pad = ((cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0,
               (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0)
        img = ImageOps.expand(img, border=pad, fill=(fill,) * 3)  # images are RGB here
        w, h = img.size
        if (w, h) == (cw, ch):
            return img
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


def preprocess_image(image: Image.Image, cfg: dict) -> np.ndarray:
    """float32 [3, H, W], equal to open_clip's eval transform of `image.convert("RGB")` (cfg: encoder.json's "image").

    RGB first, as the index was built (shards.decode_image) and as ScenarioSearch encodes
    queries; on an RGB image open_clip's own order (convert after the crop) is the same.
    """
    size, resample, mode = tuple(cfg["size"]), _RESAMPLE[cfg["interpolation"]], cfg["resize_mode"]
    img = image.convert("RGB")
    if mode == "squash":
        img = img.resize(size[::-1], resample)
    elif mode == "longest":
        img = _center_crop(_resize_keep_ratio(img, size, 1.0, resample), size, cfg["fill_color"])
    elif size[0] == size[1]:
        img = _center_crop(_resize_shortest(img, size[0], resample), size, 0)
    else:  # open_clip's non-square `shortest` resize is always bicubic
        img = _center_crop(_resize_keep_ratio(img, size, 0.0, Image.Resampling.BICUBIC), size, 0)
    x = np.asarray(img, np.uint8).astype(np.float32) / np.float32(255)
    x = (x - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class OnnxEncoder:
    """image.onnx + text.onnx + tokenizer.json + encoder.json (see onnx_export), run with onnxruntime."""

    def __init__(self, onnx_dir: Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        onnx_dir = Path(onnx_dir)
        spec = read_json(onnx_dir / ENCODER_JSON)
        self.fingerprint, self.dim = spec["model_fingerprint"], int(spec["embed_dim"])
        self._image_cfg, self._text_cfg = spec["image"], spec["text"]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = lambda name: ort.InferenceSession(str(onnx_dir / name), options, providers=["CPUExecutionProvider"])
        self._image, self._text = session(self._image_cfg["file"]), session(self._text_cfg["file"])
        t = self._text_cfg
        # What transformers' fast tokenizer sets before encode_batch for padding='max_length', truncation=True.
        self._tokenizer = Tokenizer.from_file(str(onnx_dir / t["tokenizer"]))
        self._tokenizer.enable_truncation(t["context_length"], stride=0, strategy="longest_first",
                                          direction=t["truncation_side"])
        self._tokenizer.enable_padding(direction=t["padding_side"], pad_id=t["pad_id"], pad_type_id=t["pad_type_id"],
                                       pad_token=t["pad_token"], length=t["context_length"])

    def tokenize(self, texts: list[str]) -> np.ndarray:
        """int64 [n, context_length], equal to open_clip's HFTokenizer output."""
        t = self._text_cfg
        ids = np.array([e.ids for e in self._tokenizer.encode_batch([clean_text(x, t["clean"]) for x in texts])],
                       np.int64).reshape(len(texts), t["context_length"])
        if t["strip_sep_token"]:
            ids[ids == t["sep_id"]] = 0  # open_clip writes zeros, not the pad id
        return ids

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids = self.tokenize(texts)
        if self._text_cfg["trim_padding"]:  # the tower pools with the pad mask: all-pad columns change nothing
            used = np.flatnonzero((ids != self._text_cfg["pad_id"]).any(0))
            ids = ids[:, : int(used.max()) + 1]
        return self._text.run(["embedding"], {self._text_cfg["input"]: ids})[0]

    def encode_image(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        pixels = np.stack([preprocess_image(im, self._image_cfg) for im in images])
        return self._image.run(["embedding"], {self._image_cfg["input"]: pixels})[0]


class TorchEncoder:
    """The merged open_clip model itself (any architecture, any tokenizer); torch is imported here only.

    The model loads with the first encode, not here: a serve_index re-run whose vectors are all
    cached, or a Ray driver whose actors do the encoding, needs only the fingerprint."""

    def __init__(self, merged_dir: Path, threads: int | None = None):
        from catalog_search.index import file_fingerprint

        self.merged_dir, self.threads = Path(merged_dir), threads
        self.fingerprint = file_fingerprint(self.merged_dir / "open_clip_model.safetensors")
        self.dim = int(read_json(self.merged_dir / "open_clip_config.json")["model_cfg"]["embed_dim"])
        self._loaded: tuple | None = None
        self._lock = threading.Lock()

    def _load(self) -> tuple:
        """(model, preprocess, tokenizer, torch), loaded once; call with the lock held. The lock also
        serialises the model calls; preprocessing and tokenising run outside it."""
        if self._loaded is None:
            import open_clip
            import torch

            if self.threads:
                torch.set_num_threads(self.threads)  # process-wide: torch has no per-model setting
            name = f"local-dir:{self.merged_dir}"
            model, _, preprocess = open_clip.create_model_and_transforms(name)
            self._loaded = model.eval(), preprocess, open_clip.get_tokenizer(name), torch
        return self._loaded

    def encode_text(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            model, _, tokenizer, torch = self._load()
        tokens = tokenizer(texts)
        with self._lock, torch.no_grad():
            return model.encode_text(tokens, normalize=True).float().numpy()

    def encode_image(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            model, preprocess, _, torch = self._load()
        pixels = torch.stack([preprocess(im.convert("RGB")) for im in images])  # outside the lock, as tokenising
        with self._lock, torch.no_grad():
            return model.encode_image(pixels, normalize=True).float().numpy()


def load_encoder(kind: str, model_dir: Path, threads: int | None = None) -> OnnxEncoder | TorchEncoder:
    """`kind` "onnx" reads models/onnx/<scenario>, "torch" reads models/<scenario>/merged."""
    model_dir = Path(model_dir)
    scenario = model_dir.name if kind == "onnx" else model_dir.parent.name
    if kind == "onnx":
        needed, make = ENCODER_JSON, f"`catalog-search export-onnx {scenario}`"
    elif kind == "torch":
        needed, make = "open_clip_model.safetensors", f"`dvc repro train@{scenario}`"
    else:
        raise ValueError(f"encoder kind {kind!r}: choose 'onnx' or 'torch'")
    if not (model_dir / needed).is_file():
        raise FileNotFoundError(f"no {kind} model in {model_dir} ({needed} missing): make it with {make}")
    return (OnnxEncoder if kind == "onnx" else TorchEncoder)(model_dir, threads)
