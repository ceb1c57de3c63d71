"""The serving index: every clean product (all splits), kept fresh without re-embedding it all.

Evaluation embeds the test split only (embed@<scenario>); a shop searches its whole catalog. A
product's vector depends only on its content (image bytes for a scenario's image tower, the
description for the text embedder) and on the model, so vectors live in a content-addressed
cache beside the index: key = sha256(content), valid for one model fingerprint. A re-run embeds
only keys the cache lacks (added or changed products), drops keys no product has any more, and
writes the same index a full rebuild would. Titles and attributes are re-read every run (no
model needed), with the classifier's (or VLM's) fills where the catalog has a gap.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from catalog_search import catalog
from catalog_search.index import fill_attributes, save_index
from catalog_search.io import atomic_path, write_json

# what the serving index keeps per product beside its vector (attributes: catalog.ATTRIBUTES)
ITEM_COLUMNS = ["product_id", "title", "description", "image_path"]


class VectorCache:
    """sha256(content) -> vector, for one model fingerprint (another model starts it empty)."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint
        self.vectors: dict[str, np.ndarray] = {}
        info = self.folder / "info.json"
        if info.exists() and json.loads(info.read_text()).get("model_fingerprint") == fingerprint:
            keys = pd.read_parquet(self.folder / "keys.parquet")["key"].tolist()
            vectors = np.load(self.folder / "vectors.npy")
            if len(keys) == len(vectors):  # a torn cache is ignored, never trusted
                self.vectors = dict(zip(keys, vectors))

    def save(self, keep: set[str]) -> int:
        """Write the cache holding only `keep` (the current products' keys); returns how many were dropped."""
        dropped = len(set(self.vectors) - keep)
        keys = sorted(keep & set(self.vectors))
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / "vectors.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.stack([self.vectors[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 0), np.float32))
        with atomic_path(self.folder / "keys.parquet") as tmp:
            pd.DataFrame({"key": keys}).to_parquet(tmp, index=False)
        write_json(self.folder / "info.json", {"model_fingerprint": self.fingerprint, "vectors": len(keys)})
        return dropped


def content_key(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def in_batches(encode: Callable[[list[bytes]], np.ndarray], contents: Sequence[Callable[[], bytes]], batch_size: int,
               what: str) -> Callable[[list[int]], np.ndarray]:
    """The local engine: rows (never none: refresh asks only when some are missing) encoded
    `batch_size` at a time in this process."""
    def encode_rows(rows: list[int]) -> np.ndarray:
        return np.concatenate([encode([contents[i]() for i in rows[start:start + batch_size]])
                               for start in tqdm(range(0, len(rows), batch_size), desc=f"embed {what}", mininterval=10)])
    return encode_rows


def refresh(contents: Sequence[Callable[[], bytes]], encode_rows: Callable[[list[int]], np.ndarray],
            cache: VectorCache, what: str) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """One vector per product (row order kept): from the cache, or encoded now by `encode_rows`
    (the local engine or Ray's). `contents[i]()` reads product i's content when needed (a catalog
    is never all in memory). Returns the vectors, each row's content key, and the counts."""
    keys = []
    for read in tqdm(contents, desc=f"hash {what}", mininterval=10):
        keys.append(content_key(read()))
    first: dict[str, int] = {}  # one encode per distinct content the cache lacks
    for i, k in enumerate(keys):
        if k not in cache.vectors:
            first.setdefault(k, i)
    todo = list(first.values())
    if todo:
        for i, vector in zip(todo, encode_rows(todo)):
            cache.vectors[keys[i]] = np.asarray(vector, np.float32)
    keep = set(keys)  # an unchanged catalog leaves the cache file as it is (1M vectors are ~1 GB to rewrite)
    dropped = cache.save(keep) if todo or set(cache.vectors) - keep else 0
    vectors = np.stack([cache.vectors[k] for k in keys]) if keys else np.zeros((0, 1), np.float32)
    return vectors, keys, {"products": len(keys), "embedded": len(todo), "reused": len(keys) - len(todo),
                           "dropped": dropped}


def catalog_items(catalog_path: Path, predictions: Path | None) -> tuple[pd.DataFrame, int]:
    """The clean catalog's products as the serving index lists them, with predicted fills."""
    df = catalog.load(catalog_path)
    items = df[[*ITEM_COLUMNS, *catalog.ATTRIBUTES]].reset_index(drop=True)
    if predictions is not None and predictions.exists():
        return fill_attributes(items, predictions)
    return items.assign(filled=[[] for _ in range(len(items))]), 0


def build_image_index(catalog_path: Path, predictions: Path | None, encoder: Any, out_dir: Path, cache_dir: Path,
                      batch_size: int, info: dict, index_params: dict | None = None,
                      ray_encode: Callable[[list[str]], np.ndarray] | None = None,
                      qdrant: dict | None = None) -> dict:
    """A scenario's serving index of every clean product's image. `encoder.encode_image(list of
    PIL images)` gives normalised vectors; `encoder.fingerprint` names the model. `ray_encode(image
    paths)` embeds on Ray Data instead (serve.engine: ray). With `qdrant` ({"url", "collection"}),
    the collection is synced too (serve.index.backend: qdrant)."""
    import io

    from PIL import Image

    items, filled = catalog_items(catalog_path, predictions)
    paths = [catalog.resolve_image(catalog_path, p) for p in items["image_path"]]
    contents = [path.read_bytes for path in paths]

    def encode(batch: list[bytes]) -> np.ndarray:
        return encoder.encode_image([Image.open(io.BytesIO(c)).convert("RGB") for c in batch])

    encode_rows = (lambda rows: ray_encode([str(paths[i]) for i in rows])) if ray_encode else \
        in_batches(encode, contents, batch_size, "images")
    vectors, keys, counts = refresh(contents, encode_rows, VectorCache(cache_dir, encoder.fingerprint), "images")
    index_params = {k: v for k, v in (index_params or {"kind": "flat"}).items() if k != "backend"}
    extra = {}
    if qdrant is not None:
        from catalog_search.serving.qdrant_index import client_for, sync

        client = client_for(out_dir / "qdrant", qdrant["url"])
        extra = {"qdrant_collection": qdrant["collection"],
                 "qdrant": sync(client, qdrant["collection"], vectors, items, keys, catalog.ATTRIBUTES)}
        client.close()
    save_index(out_dir, vectors, items, {**info, "model_fingerprint": encoder.fingerprint, "filled_values": filled,
                                         **counts, **extra}, index_params)
    return {**counts, "filled_values": filled, **extra}


def build_text_index(catalog_path: Path, encode: Callable[[list[str]], np.ndarray], fingerprint: str, out_dir: Path,
                     cache_dir: Path, batch_size: int, info: dict) -> dict:
    """The text embedder's index of every product description (products without one are left out)."""
    items, _ = catalog_items(catalog_path, None)
    items = items[items["description"].fillna("").str.strip().str.len() > 0].reset_index(drop=True)
    texts = items["description"].tolist()
    contents = [lambda t=t: t.encode() for t in texts]
    vectors, _, counts = refresh(contents, in_batches(lambda c: encode([b.decode() for b in c]), contents, batch_size,
                                                      "descriptions"), VectorCache(cache_dir, fingerprint), "descriptions")
    save_index(out_dir, vectors, items, {**info, "model_fingerprint": fingerprint, **counts})
    return counts


def folder_fingerprint(folder: Path) -> str:
    """A model saved as several files (the text embedder's adapter and tokenizer): one hash of them all."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]
