"""Splits (group-aware, stratified where it can) and WebDataset shards with a manifest."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image

from catalog_search import catalog
from catalog_search.catalog import ATTRIBUTES, CatalogError
from catalog_search.io import file_sha256, write_json
from catalog_search.tars import ShardWriter, is_url, read_samples

SPLITS = ["train", "val", "test", "mini_train"]


def _holdout(df: pd.DataFrame, frac: float, stratify: str | None, seed: int) -> np.ndarray:
    """Boolean mask of a ~`frac` holdout that keeps every group on one side.

    Classes with fewer rows than folds are stratified as one bucket: such a class cannot reach
    every fold anyway, and scikit-learn stops when no class can (a small catalog)."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold  # shard only: readers stay light

    groups = df["group_id"].to_numpy()
    n_splits = max(2, round(1 / frac))
    if stratify and df[stratify].notna().any() and pd.Series(groups).nunique() >= n_splits:
        labels = df[stratify].fillna("unknown").astype(str)
        labels = pd.factorize(labels.where(labels.map(labels.value_counts()) >= n_splits))[0]  # rare: -1
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, hold = next(splitter.split(np.zeros(len(df)), labels, groups))
    else:  # too few groups or no labels to stratify by
        _, hold = next(GroupShuffleSplit(n_splits=1, test_size=frac, random_state=seed).split(df, groups=groups))
    mask = np.zeros(len(df), bool)
    mask[hold] = True
    return mask


def assign_splits(df: pd.DataFrame, val_frac: float, test_frac: float, stratify: str | None, seed: int) -> pd.Series:
    """train / val / test per row; no group crosses splits."""
    if df["group_id"].nunique() < 3:
        raise CatalogError(f"only {df['group_id'].nunique()} product group(s); need at least 3 to split train/val/test")
    split = pd.Series("train", index=df.index, dtype="string")
    test = _holdout(df, test_frac, stratify, seed)
    split[test] = "test"
    rest = df[~test]
    val = _holdout(rest, val_frac / (1 - test_frac), stratify, seed + 1)
    split[rest.index[val]] = "val"
    return split


def sample_record(row: dict, image_bytes: bytes) -> dict:
    """One WebDataset sample: the image plus a JSON of captions and attributes."""
    ext = Path(row["image_path"]).suffix.lstrip(".").lower()
    meta = {k: (row[k] if not pd.isna(row[k]) else None) for k in ["product_id", "title", "description", "query", "group_id", *ATTRIBUTES]}
    meta["captions"] = list(row["captions"])
    return {"__key__": Path(row["image_path"]).stem, ext: image_bytes, "json": json.dumps(meta).encode()}


def write_shards(df: pd.DataFrame, catalog_path: Path, out_dir: Path, samples_per_shard: int) -> dict:
    """Write `<split>-NNNNNN.tar` per split (plus mini_train) and return the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"samples_per_shard": samples_per_shard, "splits": {}}
    for split in SPLITS:
        part = df[df["split"] == split] if split != "mini_train" else df[df["mini_train"]]
        with ShardWriter(str(out_dir / f"{split}-%06d.tar"), samples_per_shard) as sink:
            for row in part.to_dict("records"):  # plain dicts: a pandas Series per row costs more than the write
                sink.write(sample_record(row, catalog.resolve_image(catalog_path, row["image_path"]).read_bytes()))
        # read every shard back: the manifest records what a reader gets, not what we meant to write
        written = [(Path(f).name, sum(1 for _ in read_samples(Path(f))), file_sha256(f)) for f in sink.written]
        manifest["splits"][split] = {
            "samples": len(part),
            "groups": int(part["group_id"].nunique()),
            "by_category": {str(k): int(v) for k, v in part["category"].fillna("unknown").value_counts().sort_index().items()},
            "shards": [{"file": name, "samples": n, "sha256": sha} for name, n, sha in written],
        }
    return manifest


def read_manifest(shard_dir: Path | str) -> dict:
    """The manifest of a shard folder: local, or a URL (s3://bucket/prefix) the shards were pushed to."""
    if is_url(shard_dir):
        import fsspec

        try:
            with fsspec.open(f"{str(shard_dir).rstrip('/')}/manifest.json", "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            raise CatalogError(f"{shard_dir}/manifest.json not found: push the shards there first "
                               f"(catalog-search push-shards {shard_dir})") from None
    return json.loads((Path(shard_dir) / "manifest.json").read_text())


def shard_urls(shard_dir: Path | str, split: str) -> list[str]:
    """The shard files of a split, from the manifest (so a stray tar is never read)."""
    manifest = read_manifest(shard_dir)
    if split not in manifest["splits"]:
        raise CatalogError(f"{shard_dir}/manifest.json has no split {split!r}; splits: {list(manifest['splits'])}")
    join = (lambda f: f"{str(shard_dir).rstrip('/')}/{f}") if is_url(shard_dir) else (lambda f: str(Path(shard_dir) / f))
    return [join(s["file"]) for s in manifest["splits"][split]["shards"]]


def push_shards(shard_dir: Path, url: str) -> list[str]:
    """Upload a shard folder to `url` (s3://bucket/prefix), the manifest last: a reader that finds
    the manifest finds every shard it lists. Returns the uploaded file names."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    names = [p.name for p in sorted(Path(shard_dir).glob("*.tar"))]
    for name in [*names, "manifest.json"]:
        fs.put_file(str(Path(shard_dir) / name), f"{root.rstrip('/')}/{name}")
    return [*names, "manifest.json"]


def iter_samples(shard_dir: Path | str, split: str) -> Iterator[dict]:
    """Samples of a split in shard order: key, encoded image bytes, and the JSON metadata.

    Every process reads the whole split (no node or worker splitting): the trainer draws global
    batches from it and each rank embeds its slice of every batch.
    """
    for url in shard_urls(shard_dir, split):
        for sample in read_samples(url if is_url(url) else Path(url)):
            image_key = next(k for k in sample if k in ("jpg", "jpeg", "png", "webp"))
            yield {"key": sample["__key__"], "image": sample[image_key], **json.loads(sample["json"])}


def decode_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def save_manifest(out_dir: Path, manifest: dict) -> None:
    write_json(out_dir / "manifest.json", manifest)
