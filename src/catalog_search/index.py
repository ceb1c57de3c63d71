"""Embeddings on disk and the vector index (FAISS, inner product on L2-normalised rows).

Layout of an embedding folder: images.npy, texts.npy (float32, normalised), items.parquet
(one row per image: product id, title, captions, attributes; row i = FAISS id i), texts.parquet
(one row per text), image.faiss (the index over the images) and info.json (dimension, index
kind, the model's fingerprint: a search with another model is refused).

Index kinds (`embed.index.kind`): `flat` is exact and the default; `hnsw` and `ivf` are
approximate, for catalogs where exact search is too slow (bench/search_index.py measures it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from catalog_search.catalog import ATTRIBUTES
from catalog_search.config import INDEX_KINDS
from catalog_search.evaluation import normalise
from catalog_search.io import atomic_path, file_sha256, write_json


class IndexMismatch(RuntimeError):
    """The index was built for other vectors than the query's: the message says what to re-run."""


def file_fingerprint(path: Path) -> str:
    """A short content id of a model file: which weights an index or ONNX export was built from."""
    return file_sha256(path)[:16]


def build_index(vectors: np.ndarray, kind: str = "flat", hnsw_m: int = 32, ef_construction: int = 200,
                ef_search: int = 128, nlist: int | None = None, nprobe: int = 16) -> faiss.Index:
    """An inner-product index over normalised `vectors`; row i keeps FAISS id i."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    d = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = ef_construction, ef_search
    elif kind == "ivf":
        nlist = nlist or max(1, int(np.sqrt(len(vectors))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample: 64 points per list is plenty, and all of 1M would take an hour on 2 cores
        sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), 64 * nlist), replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = nprobe
    else:
        raise ValueError(f"index kind {kind!r} is not valid; choose one of {INDEX_KINDS}")
    index.add(vectors)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
           vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) per query; `allowed` (sorted ids) restricts the result set.

    The filter runs inside FAISS (an ID selector), so a filtered query still gets k results
    when k products pass it. An approximate index can miss some under a selective filter;
    then the allowed rows are searched exactly (`vectors`: the indexed rows), which is cheap
    precisely because the filter left few of them. Missing slots (k > candidates) are id -1.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    if allowed is None:
        return index.search(queries, k)
    if len(allowed) == 0:
        return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
    selector = faiss.IDSelectorBatch(np.asarray(allowed, np.int64))
    params = {faiss.IndexHNSWFlat: faiss.SearchParametersHNSW, faiss.IndexIVFFlat: faiss.SearchParametersIVF}
    sp = params.get(type(index), faiss.SearchParameters)(sel=selector)
    if isinstance(index, faiss.IndexHNSWFlat):
        sp.efSearch = max(index.hnsw.efSearch, k)
    elif isinstance(index, faiss.IndexIVFFlat):
        sp.nprobe = index.nprobe
    scores, ids = index.search(queries, k, params=sp)
    want = min(k, len(allowed))
    if vectors is not None and (ids[:, :want] < 0).any():
        sub = vectors[allowed] @ queries.T                      # (n_allowed, n_queries)
        top = np.argsort(-sub, axis=0, kind="stable")[:want].T  # (n_queries, want)
        ids = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids[:, :want] = np.asarray(allowed)[top]
        scores[:, :want] = np.take_along_axis(sub.T, top, axis=1)
    return scores, ids


def save_index(out_dir: Path, images: np.ndarray, items: pd.DataFrame, info: dict,
               index_params: dict[str, Any] | None = None) -> None:
    """images.npy (normalised), items.parquet (row i = FAISS id i), image.faiss and info.json: what
    ProductIndex opens, for the evaluation split (embed) and for the whole catalog (serve_index)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = normalise(images)
    _save_npy(out_dir / "images.npy", images)
    with atomic_path(out_dir / "items.parquet") as tmp:
        items.to_parquet(tmp, index=False)
    index_params = index_params or {"kind": "flat"}
    index = build_index(images, **index_params)
    with atomic_path(out_dir / "image.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    write_json(out_dir / "info.json", {**info, "dim": int(images.shape[1]), "n_images": len(images),
                                       "index": index_params})


def save_embeddings(out_dir: Path, images: np.ndarray, texts: np.ndarray, items: pd.DataFrame,
                    text_rows: pd.DataFrame, info: dict, index_params: dict[str, Any] | None = None) -> None:
    """An evaluation split's index (save_index) plus its caption embeddings (texts.npy/.parquet)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_npy(out_dir / "texts.npy", normalise(texts))
    with atomic_path(out_dir / "texts.parquet") as tmp:
        text_rows.to_parquet(tmp, index=False)
    save_index(out_dir, images, items, {**info, "n_texts": len(texts)}, index_params)


def product_title(sample: dict) -> str:
    """The text a product is listed under: its (cleaned) title, else its first caption."""
    return str(sample.get("title") or sample["captions"][0]).strip()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(arr, np.float32))


def save_queries(out_dir: Path, titles: list[str], title_vectors: np.ndarray, queries: list[tuple[str, str]],
                 query_vectors: np.ndarray) -> None:
    """The evaluation protocols' texts beside the embeddings: titles.npy (row i = image i's product
    title), queries.parquet + queries.npy (one attribute value per row)."""
    _save_npy(out_dir / "titles.npy", normalise(title_vectors))
    if not queries:  # a catalog without attributes
        query_vectors = np.zeros((0, title_vectors.shape[1]), np.float32)
    _save_npy(out_dir / "queries.npy", normalise(query_vectors))
    with atomic_path(out_dir / "queries.parquet") as tmp:
        pd.DataFrame(queries, columns=["attribute", "value"]).to_parquet(tmp, index=False)


def load_embeddings(folder: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame, dict]:
    folder = Path(folder)
    if not (folder / "info.json").exists():
        raise FileNotFoundError(f"{folder}: no embeddings here; run the embed stage (dvc repro embed).")
    return (np.load(folder / "images.npy"), np.load(folder / "texts.npy"), pd.read_parquet(folder / "items.parquet"),
            pd.read_parquet(folder / "texts.parquet"), json.loads((folder / "info.json").read_text()))


def fill_attributes(items: pd.DataFrame, predictions: Path) -> tuple[pd.DataFrame, int]:
    """Fill a product table's missing attributes with the values predict_attributes (or extract_vlm)
    filled (`source: predicted`, confident ones only), so a filter also finds the products whose
    feed left that attribute out. A value the catalog gave is never replaced. Column `filled` lists
    the attributes filled per product. Returns the table and how many values were filled."""
    filled: dict[str, dict[str, str]] = {}
    with open(predictions, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            for column, v in record["attributes"].items():
                if v["source"] == "predicted":
                    filled.setdefault(column, {})[record["product_id"]] = v["value"]
    items, count = items.copy(), 0
    names: dict[str, list[str]] = dict(zip(items["product_id"], items["filled"])) if "filled" in items else {}
    for column, values in filled.items():
        if column not in items.columns:
            continue
        new = items[column].isna() & items["product_id"].map(values).notna()
        items[column] = items[column].fillna(items["product_id"].map(values))
        for pid in items.loc[new, "product_id"]:
            names[pid] = [*names.get(pid, []), column]
        count += int(new.sum())
    items["filled"] = items["product_id"].map(lambda pid: list(names.get(pid, [])))
    return items, count


class ProductIndex:
    """One scenario's image index with its product table: what search and the arena query."""

    def __init__(self, folder: Path, build_hint: str | None = None):
        folder = Path(folder)
        if not (folder / "image.faiss").exists():
            raise FileNotFoundError(f"no index in {folder}: {build_hint or f'run `dvc repro embed@{folder.name}`'} first")
        self.folder = folder
        self.info = json.loads((folder / "info.json").read_text())
        self.index = faiss.read_index(str(folder / "image.faiss"))
        self.items = pd.read_parquet(folder / "items.parquet")
        self.images = np.load(folder / "images.npy", mmap_mode="r")
        if self.index.ntotal != len(self.items) or self.index.d != self.info["dim"]:
            raise IndexMismatch(f"{folder}: image.faiss holds {self.index.ntotal} x {self.index.d} but items.parquet/"
                                f"info.json say {len(self.items)} x {self.info['dim']}; re-run the embed stage")
        self.row = {pid: i for i, pid in enumerate(self.items["product_id"].astype(str))}  # product id -> FAISS id

    def check_model(self, fingerprint: str, model: Path, rerun: str) -> None:
        """Refuse to search with a model other than the one that embedded the catalog (`fingerprint`
        is the query encoder's); `rerun` says what to run instead."""
        expected = self.info.get("model_fingerprint")
        if expected and fingerprint != expected:
            raise IndexMismatch(f"{model} is not the model that built {self.folder}; re-run {rerun}")

    def check_filters(self, where: dict[str, str]) -> None:
        for column in where:
            if column not in self.filterable:
                raise ValueError(f"filter {column}=...: no attribute {column!r}; filterable: {self.filterable}")

    def fill_attributes(self, predictions: Path) -> int:
        """fill_attributes on this index's product table; returns how many values were filled."""
        self.items, count = fill_attributes(self.items, predictions)
        return count

    @property
    def filterable(self) -> list[str]:
        return [c for c in ATTRIBUTES if c in self.items.columns]

    def product(self, row: int) -> dict[str, Any]:
        """Row `row`'s product: id, title, attributes (catalog values and fills) and which were filled."""
        item = self.items.iloc[row]
        attributes = {c: item[c] for c in self.filterable if isinstance(item[c], str)}
        return {"product_id": str(item["product_id"]), "title": str(item["title"]), "attributes": attributes,
                "filled": list(item["filled"]) if "filled" in item.index else []}

    def allowed(self, where: dict[str, str]) -> np.ndarray | None:
        """Row ids whose attributes match every `column=value` (case-insensitive); None = no filter."""
        if not where:
            return None
        self.check_filters(where)
        mask = np.ones(len(self.items), bool)
        for column, value in where.items():
            mask &= self.items[column].astype("string").str.lower().eq(value.lower()).fillna(False).to_numpy()
        return np.flatnonzero(mask)

    def query(self, vectors: np.ndarray, k: int, where: dict[str, str] | None = None) -> list[list[dict]]:
        """Ranked products (rank, product_id, title, score) for each query vector."""
        if vectors.shape[1] != self.index.d:
            raise IndexMismatch(f"query vectors have {vectors.shape[1]} dims, {self.folder}/image.faiss holds "
                                f"{self.index.d}: the index was built with another model")
        scores, ids = search(self.index, normalise(vectors), k, self.allowed(where or {}), self.images)
        return [[{"rank": r + 1, "product_id": str(self.items.at[int(i), "product_id"]),
                  "title": str(self.items.at[int(i), "title"]), "score": round(float(s), 4)}
                 for r, (i, s) in enumerate((i, s) for i, s in zip(row_ids, row_scores) if i >= 0)]
                for row_ids, row_scores in zip(ids, scores)]
