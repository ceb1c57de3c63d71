"""The Catalog table: one row per product image, the data contract between stages
(README: "Your own catalog").

Readers produce it, clean refines it, shard splits it. Rows that cannot be used are never
dropped silently: they go to a `rejected` table with a reason code and a human message.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from catalog_search.core.constants import ATTRIBUTES
from catalog_search.errors import UserError
from catalog_search.io import atomic_path

TEXT_COLUMNS = ["title_raw", "title", "description", "query"]
COLUMNS = ["product_id", "image_path", *TEXT_COLUMNS, "captions", *ATTRIBUTES, "group_id", "split"]
REQUIRED = ["product_id", "image_path", "title_raw"]
# clean's rejects: the raw catalog's row, where the source had it (file and row), the reason code,
# a message that says what to do, and for duplicates the product they repeat
REJECTED_SCHEMA = pa.schema([
    ("source_row", pa.int64()), ("source", pa.string()), ("product_id", pa.string()), ("image_path", pa.string()),
    ("title_raw", pa.string()), ("reason", pa.string()), ("message", pa.string()), ("duplicate_of", pa.string()),
])


class CatalogError(UserError, ValueError):
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


def row_source(file: str | Path, i: int) -> str:
    """The `source` of a table's `i`-th data row (0-based), numbered as every reader's messages number
    rows: from 1, the header not counted, so a row reads the same in a CSV, a TSV or a parquet file."""
    return f"{file} row {i + 1}"


def arrow_schema(raw: pa.Schema) -> pa.Schema:
    """The clean catalog's parquet schema from the raw one: columns that were all-null in the raw
    file get their real types (so every chunk clean writes has one schema), plus `duplicate_of`."""
    fields = []
    for f in raw:
        if f.name == "captions":
            fields.append(pa.field(f.name, pa.list_(pa.string())))
        elif pa.types.is_null(f.type) or pa.types.is_large_string(f.type):
            fields.append(pa.field(f.name, pa.string()))
        else:
            fields.append(pa.field(f.name, f.type))
    return pa.schema([*fields, ("duplicate_of", pa.string())])


def resolve_image(catalog_path: str | Path, image_path: str) -> Path:
    """An image path from the catalog, relative to the catalog file's folder (or absolute)."""
    return Path(catalog_path).parent / image_path


ROW_GROUP = 10_000  # rows per parquet row group: a reader streaming the file holds one group at a time


def save(df: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, row_group_size=ROW_GROUP)


def load(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"{path}: catalog file not found; run the stage that writes it (dvc repro).")
    df = pd.read_parquet(path)
    if "captions" in df.columns:
        df["captions"] = df["captions"].map(lambda c: [] if c is None else list(c))
    return df
