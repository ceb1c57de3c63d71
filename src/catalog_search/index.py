"""Embeddings on disk and the vector index (FAISS, inner product on L2-normalised rows).

Layout of an embedding folder: images.npy, texts.npy (float32, normalised), items.parquet
(one row per image: product id, title, captions, attributes), texts.parquet (one row per text),
image.faiss (exact index over the images; row i = items row i).
"""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from catalog_search.evaluation import normalise
from catalog_search.io import atomic_path, write_json


def save_embeddings(out_dir: Path, images: np.ndarray, texts: np.ndarray, items: pd.DataFrame,
                    text_rows: pd.DataFrame, info: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    images, texts = normalise(images), normalise(texts)
    for name, arr in (("images.npy", images), ("texts.npy", texts)):
        with atomic_path(out_dir / name) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)
    for name, df in (("items.parquet", items), ("texts.parquet", text_rows)):
        with atomic_path(out_dir / name) as tmp:
            df.to_parquet(tmp, index=False)
    index = faiss.IndexFlatIP(images.shape[1])
    index.add(images)
    with atomic_path(out_dir / "image.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    write_json(out_dir / "info.json", {**info, "dim": int(images.shape[1]), "n_images": len(images), "n_texts": len(texts)})


def load_embeddings(folder: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame, dict]:
    folder = Path(folder)
    if not (folder / "info.json").exists():
        raise FileNotFoundError(f"{folder}: no embeddings here; run the embed stage (dvc repro embed).")
    return (np.load(folder / "images.npy"), np.load(folder / "texts.npy"), pd.read_parquet(folder / "items.parquet"),
            pd.read_parquet(folder / "texts.parquet"), json.loads((folder / "info.json").read_text()))
