"""Existing WebDataset shards: per sample an image (jpg/png/webp) and a txt caption or a json with
several captions and any Catalog fields; all captions are kept (caption augmentation)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from catalog_search.catalog import ATTRIBUTES, CatalogError
from catalog_search.sources.embedded import ImageWriter, text
from catalog_search.tars import expand_urls, read_samples

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "json")


def read_webdataset(folder: Path, urls: str | list[str], out_dir: Path) -> pd.DataFrame:
    """Read the shards `urls` (brace patterns allowed, relative to `folder`)."""
    images = ImageWriter(out_dir, "wds")
    rows, seen_exts = [], set()
    paths = expand_urls(urls, folder)
    for path in tqdm(paths, desc="ingest shards", unit="shard"):
        for sample in read_samples(path):
            seen_exts |= set(k for k in sample if not k.startswith("__"))
            rows.append(_row(sample, images))
    # a sample without an image is one bad row (clean sets it aside); no images at all is a wrong layout
    if not seen_exts & set(IMAGE_EXTS) or not seen_exts & set(TEXT_EXTS):
        raise CatalogError(f"{paths[0]}{' ...' if len(paths) > 1 else ''}: samples have {sorted(seen_exts) or 'no members'}; "
                           f"the webdataset reader expects an image ({'/'.join(IMAGE_EXTS)}) and a txt caption or a "
                           "json (captions, title, product_id, ...) per sample.")
    return pd.DataFrame(rows)


def _row(sample: dict, images: ImageWriter) -> dict:
    where = f"{sample['__url__']} key {sample['__key__']}"
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            meta = {}  # a broken json leaves the sample without text: clean rejects it as missing_title
        meta = meta if isinstance(meta, dict) else {}
    captions = meta.get("captions") or [meta[k] for k in ("caption", "text") if meta.get(k)]
    captions = [str(c) for c in (captions if isinstance(captions, list) else [captions])]
    if "txt" in sample:
        captions.insert(0, text(sample["txt"]).strip())
    image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    return {
        "product_id": str(meta.get("product_id") or sample["__key__"]),
        "image_path": images.write(sample[image_ext], f"x.{image_ext}") if image_ext else None,
        "title_raw": meta.get("title") or (captions[0] if captions else None),
        "description": meta.get("description"), "captions": captions, "group_id": meta.get("group_id"),
        **{a: meta.get(a) for a in ATTRIBUTES if meta.get(a) is not None},
        "source": where,
    }
