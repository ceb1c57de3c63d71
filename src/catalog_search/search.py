"""A trained scenario ready to answer queries: its FAISS index now, its model when first needed.

Test-set captions and catalog images already have embeddings on disk, so the arena answers
those without torch; a typed query or a query photo loads the scenario's merged open_clip
checkpoint (and torch) once. Attribute filters also match the values the attribute classifier
(predict_attributes) or the attribute VLM (extract_vlm) filled in where the catalog had none.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catalog_search.index import ProductIndex


# where filters' filled-in attributes come from: predict_attributes' or extract_vlm's output (same shape)
PREDICTED_ATTRIBUTES = {"classifier": "data/attributes/predictions.jsonl", "vlm": "data/vlm/predictions.jsonl"}


class ScenarioSearch:
    def __init__(self, scenario: str, root: Path = Path("."), attributes_from: str = "classifier"):
        self.scenario = scenario
        self.index = ProductIndex(Path(root) / "data/embeddings" / scenario)
        predictions = Path(root) / PREDICTED_ATTRIBUTES[attributes_from]
        self.filled = self.index.fill_attributes(predictions) if predictions.exists() else 0
        self.model_dir = Path(root) / "models" / scenario / "merged"
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            import open_clip

            if not (self.model_dir / "open_clip_model.safetensors").exists():
                raise FileNotFoundError(f"no model in {self.model_dir}: run `dvc repro train@{self.scenario}` first")
            self.index.check_model(self.model_dir / "open_clip_model.safetensors")
            name = f"local-dir:{self.model_dir}"
            model, _, preprocess = open_clip.create_model_and_transforms(name)
            self._model = (model.eval(), preprocess, open_clip.get_tokenizer(name))
        return self._model

    def encode_text(self, texts: list[str]) -> np.ndarray:
        import torch

        model, _, tokenizer = self._load()
        with torch.no_grad():
            return model.encode_text(tokenizer(texts)).float().numpy()

    def encode_image(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        model, preprocess, _ = self._load()
        with torch.no_grad():
            return model.encode_image(torch.stack([preprocess(im.convert("RGB")) for im in images])).float().numpy()

    def search_text(self, query: str, k: int, where: dict[str, str] | None = None) -> list[dict]:
        return self.index.query(self.encode_text([query]), k, where)[0]

    def search_image(self, path: Path, k: int, where: dict[str, str] | None = None) -> list[dict]:
        try:
            image = Image.open(path)
            image.load()
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable image ({e})") from e
        return self.index.query(self.encode_image([image]), k, where)[0]
