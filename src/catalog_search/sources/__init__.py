"""Readers that turn user data into a Catalog; `data.source` in params.yaml picks one.

A reader is `read(path, cfg, out_dir) -> DataFrame`: `path` is the input location
(`data.path`), `cfg` its own params section, `out_dir` where it may write files it creates
(the demo and the sources with embedded images write their images there). A reader may add a
`source` column naming each row's origin (file and row, as `catalog.row_source` numbers rows);
clean's messages quote it. New formats register here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from catalog_search import catalog
from catalog_search.io import file_sha256
from catalog_search.params import check_choice
from catalog_search.sources.demo import build_demo
from catalog_search.sources.fashion_product import read_fashion_product
from catalog_search.sources.fashiongen import read_fashiongen
from catalog_search.sources.table import read_table
from catalog_search.sources.webdataset import read_webdataset

Reader = Callable[[Path, dict, Path], pd.DataFrame]


def _table(path: Path, cfg: dict, out: Path | None = None) -> pd.DataFrame:
    """The table source reads its images where they lie: it writes nothing to `out`."""
    return read_table(path / cfg["file"], cfg["columns"], cfg.get("encoding", "utf-8"), cfg.get("image_root"),
                      cfg.get("url_folder"))


READERS: dict[str, Reader] = {
    "demo": lambda path, cfg, out: build_demo(path, out, **cfg),
    "table": _table,
    "fashion_product": lambda path, cfg, out: read_fashion_product(path, cfg["files"], out),
    "fashiongen": lambda path, cfg, out: read_fashiongen(path, cfg["files"], out),
    "webdataset": lambda path, cfg, out: read_webdataset(path, cfg["urls"], out),
}


def ingest(data_params: dict, out_dir: Path) -> pd.DataFrame:
    """Read the configured source into a conformed Catalog (not yet cleaned)."""
    source = data_params["source"]
    check_choice("data.source", source, READERS)
    df = READERS[source](Path(data_params["path"]), data_params.get(source) or {}, out_dir)
    where = str(Path(data_params["path"]) / (data_params.get(source) or {}).get("file", ""))
    if df.empty:
        raise catalog.CatalogError(f"{where}: the source has no rows; nothing to build a catalog from.")
    if "source" not in df.columns:  # where each row came from, for clean's messages
        df["source"] = [catalog.row_source(source, i) for i in range(len(df))]
    return catalog.conform(df, where)


def table_image_hashes(data_params: dict) -> dict[str, str | None]:
    """sha256 of each local image file the table names, by the path ingest records (None: no such file).

    The table source is the one that reads images in place, from anywhere on disk (image_root,
    absolute paths, url_folder), where DVC sees no change; the other readers write theirs into
    ingest's output. The image_hashes stage writes this for clean to depend on.
    """
    df = _table(Path(data_params["path"]), data_params["table"])
    paths = sorted({p for p in df["image_path"].dropna() if "://" not in p})  # a URL left: clean rejects it
    return {p: file_sha256(p) if Path(p).is_file() else None for p in paths}
