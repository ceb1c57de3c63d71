"""The Catalog table: one row per product image, the data contract between stages (DESIGN.md).

Readers produce it, clean refines it, shard splits it. Rows that cannot be used are never
dropped silently: they go to a `rejected` table with a reason code and a human message.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from catalog_search.io import atomic_path

ATTRIBUTES = [
    "category", "subcategory", "article_type", "color", "pattern",
    "material", "style", "gender", "usage", "season",
]
TEXT_COLUMNS = ["title_raw", "title", "description", "query"]
COLUMNS = ["product_id", "image_path", *TEXT_COLUMNS, "captions", *ATTRIBUTES, "group_id", "split"]
REQUIRED = ["product_id", "image_path", "title_raw"]
REJECTED_COLUMNS = ["source_row", "product_id", "image_path", "title_raw", "reason", "message"]


class CatalogError(ValueError):
    """The catalog cannot be used as given; the message names the file, row and fix."""


def conform(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check the required columns and return `df` with every contract column, in order.

    Missing optional columns are added as nulls; extra columns are kept after the contract ones.
    `where` names the input in error messages.
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise CatalogError(
            f"{where}: missing required column(s) {missing}; found {list(df.columns)}. "
            f"Map your column names to {REQUIRED} in params.yaml (data.table.columns)."
        )
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = [[] for _ in range(len(df))] if col == "captions" else None
    for col in ["product_id", "image_path", "group_id"]:
        df[col] = df[col].astype("string")
    df["group_id"] = df["group_id"].fillna(df["product_id"])
    extra = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + extra].reset_index(drop=True)


def rejected_frame(rows: list[dict]) -> pd.DataFrame:
    """Rejected rows as a table with the fixed columns (an empty table keeps its schema)."""
    df = pd.DataFrame(rows, columns=REJECTED_COLUMNS)
    return df.astype({"source_row": "Int64", **{c: "string" for c in REJECTED_COLUMNS[1:]}})


def resolve_image(catalog_path: str | Path, image_path: str) -> Path:
    """An image path from the catalog, relative to the catalog file's folder (or absolute)."""
    return Path(catalog_path).parent / image_path


def save(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def load(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"{path}: catalog file not found; run the stage that writes it (dvc repro).")
    df = pd.read_parquet(path)
    if "captions" in df.columns:
        df["captions"] = df["captions"].map(lambda c: [] if c is None else list(c))
    return df
