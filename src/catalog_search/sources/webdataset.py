"""Existing WebDataset shards: per sample an image (jpg/png/webp) and a txt caption or a json with
several captions and any Catalog fields; all captions are kept (caption augmentation)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from braceexpand import braceexpand
from tqdm import tqdm

from catalog_search.catalog import ATTRIBUTES, COLUMNS, CatalogError
from catalog_search.sources.embedded import ImageWriter, source_files, text
from catalog_search.tars import read_samples

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "json")
GLOB = re.compile(r"[*?[]")
NOT_ATTRIBUTES = {*COLUMNS, "source"} - set(ATTRIBUTES)  # the row's other columns: a json's top level gives them


def read_webdataset(folder: Path, urls: str | list[str], out_dir: Path) -> pd.DataFrame:
    """Read the shards `urls` (see `shard_paths`)."""
    images = ImageWriter(out_dir, "wds")
    rows, seen_exts = [], set()
    paths = shard_paths(folder, urls)
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


def shard_paths(folder: Path, urls: str | list[str]) -> list[Path]:
    """Shard files from a glob (`*.tar`: every shard in the folder, sorted), a brace pattern
    (`shards-{000000..000009}.tar`) or a list of them, relative to `folder`. A glob that matches
    nothing stops here; a named shard that is missing stops when it is read."""
    paths: list[Path] = []
    for pattern in [urls] if isinstance(urls, str) else urls:
        for name in braceexpand(pattern):
            glob = GLOB.search(name)
            paths += source_files(folder, name, "shards", "data.webdataset.urls") if glob else [folder / name]
    return paths


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
        **_attributes(meta, where),
        "source": where,
    }


def _attributes(meta: dict, where: str) -> dict:
    """A sample's attributes from top-level keys (`"color": "Red"`) and an `attributes` object
    (`"attributes": {"color": "Red", "fit": "slim"}`); where both give one, the top level wins. Names
    outside catalog.ATTRIBUTES become extra columns, as the table reader keeps a table's extra columns."""
    nested = meta.get("attributes") or {}
    if not isinstance(nested, dict) or NOT_ATTRIBUTES & nested.keys():
        raise CatalogError(f"{where}: json 'attributes' is {nested!r:.200}; it must be an object of attribute names "
                           f"to values, none of them {sorted(NOT_ATTRIBUTES)} (those go at the json's top level).")
    top = {a: meta[a] for a in ATTRIBUTES if meta.get(a) is not None}
    return {name: value for name, value in {**nested, **top}.items() if value is not None}
