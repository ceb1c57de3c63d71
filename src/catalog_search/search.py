"""A trained scenario ready to answer queries: its FAISS index now, its query encoder when first needed.

The index is the scenario's serving index (data/serving/<scenario>: every clean product); the
arena passes the evaluation split's folder instead (its test captions are embedded there). A
typed query or a query photo loads the encoder once per process, under a lock, so concurrent
first queries share one load: PyTorch (the merged checkpoint) or onnxruntime (models/onnx/<s>,
torch never imported). "More like this" needs no encoder: the product's own vector is indexed.
Filters also match attribute values the classifier (predict_attributes) or the attribute VLM
(extract_vlm) filled in where the catalog had none.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catalog_search.index import ProductIndex

# where filters' filled-in attributes come from: predict_attributes' or extract_vlm's output (same shape)
PREDICTED_ATTRIBUTES = {"classifier": "data/attributes/predictions.jsonl", "vlm": "data/vlm/predictions.jsonl"}


def encoder_dir(root: Path, scenario: str, kind: str) -> Path:
    """Where a scenario's query encoder lives: its merged checkpoint (train@<s>'s output), or the
    ONNX export (`catalog-search export-onnx`), which sits outside that DVC output on purpose:
    writing into models/<s>/ would make DVC see train@<s> as modified and train it again."""
    return Path(root) / "models" / scenario / "merged" if kind == "torch" else Path(root) / "models/onnx" / scenario


def json_info(folder: Path) -> dict:
    path = Path(folder) / "info.json"
    return json.loads(path.read_text()) if path.exists() else {}


class ScenarioSearch:
    def __init__(self, scenario: str, root: Path = Path("."), attributes_from: str = "classifier",
                 folder: Path | None = None, encoder: str = "torch", threads: int | None = None,
                 qdrant_url: str | None = None):
        self.scenario, self.encoder_kind, self.threads = scenario, encoder, threads
        folder = Path(folder) if folder else Path(root) / "data/serving" / scenario
        hint = None if folder.parent.name == "embeddings" else \
            f"add {scenario} to serve.scenarios in params.yaml and run `dvc repro serve_index`"
        if json_info(folder).get("qdrant_collection"):  # serve.index.backend: qdrant
            from catalog_search.serving.qdrant_index import QdrantIndex

            self.index: ProductIndex = QdrantIndex(folder, qdrant_url, build_hint=hint)
        else:
            self.index = ProductIndex(folder, build_hint=hint)
        predictions = Path(root) / PREDICTED_ATTRIBUTES[attributes_from]
        self.filled = self.index.fill_attributes(predictions) if predictions.exists() else 0
        self.model_dir = encoder_dir(root, scenario, encoder)
        self._encoder: Any = None
        self._lock = threading.Lock()

    @property
    def encoder(self) -> Any:
        """The query encoder, loaded by the first query that needs it; the others wait for that load."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    from catalog_search.serving.encoders import load_encoder

                    encoder = load_encoder(self.encoder_kind, self.model_dir, self.threads)
                    stage = "embed" if self.index.folder.parent.name == "embeddings" else "serve_index"
                    self.index.check_model(encoder.fingerprint, self.model_dir, f"`dvc repro {stage}@{self.scenario}`"
                                           + (f" and `catalog-search export-onnx {self.scenario}`"
                                              if self.encoder_kind == "onnx" else ""))
                    self._encoder = encoder
        return self._encoder

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode_text(texts)

    def encode_image(self, images: list[Image.Image]) -> np.ndarray:
        return self.encoder.encode_image([im.convert("RGB") for im in images])

    def search_text(self, query: str, k: int, where: dict[str, str] | None = None) -> list[dict]:
        return self.index.query(self.encode_text([query]), k, where)[0]

    def search_image(self, image: Path | Image.Image, k: int, where: dict[str, str] | None = None) -> list[dict]:
        if isinstance(image, Path):
            try:
                with Image.open(image) as im:
                    im.load()
                    image = im.convert("RGB")
            except (OSError, ValueError) as e:
                raise ValueError(f"{image}: not a readable image ({e})") from e
        return self.index.query(self.encode_image([image]), k, where)[0]

    def similar(self, product_id: str, k: int, where: dict[str, str] | None = None) -> list[dict]:
        """Products nearest to `product_id`'s own vector, itself left out ("more like this")."""
        row = self.index.row[product_id]  # KeyError: unknown product
        hits = self.index.query(np.asarray(self.index.images[row: row + 1]), k + 1, where)[0]
        hits = [h for h in hits if h["product_id"] != product_id][:k]
        return [{**h, "rank": r + 1} for r, h in enumerate(hits)]
