"""Readers that turn user data into a Catalog; `data.source` in params.yaml picks one.

A reader is `read(path, cfg, out_dir) -> DataFrame`: `path` is the input location
(`data.path`), `cfg` its own params section, `out_dir` where it may write files it creates
(the demo writes its images there). New formats register here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from catalog_search import catalog
from catalog_search.params import check_choice
from catalog_search.sources.demo import build_demo
from catalog_search.sources.table import read_table

Reader = Callable[[Path, dict, Path], pd.DataFrame]

READERS: dict[str, Reader] = {
    "demo": lambda path, cfg, out: build_demo(path, out, **cfg),
    "table": lambda path, cfg, out: read_table(path / cfg["file"], cfg["columns"], cfg.get("encoding", "utf-8")),
}


def ingest(data_params: dict, out_dir: Path) -> pd.DataFrame:
    """Read the configured source into a conformed Catalog (not yet cleaned)."""
    source = data_params["source"]
    check_choice("data.source", source, READERS)
    df = READERS[source](Path(data_params["path"]), data_params.get(source) or {}, out_dir)
    where = str(Path(data_params["path"]) / (data_params.get(source) or {}).get("file", ""))
    df = catalog.conform(df, where)
    if df.empty:
        raise catalog.CatalogError(f"{where}: the source has no rows; nothing to build a catalog from.")
    return df
