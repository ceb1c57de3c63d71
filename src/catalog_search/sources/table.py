"""Your own catalog: a CSV or parquet file plus its images, column names mapped in params."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from catalog_search.catalog import CatalogError


def read_table(path: Path, columns: dict[str, str], encoding: str = "utf-8") -> pd.DataFrame:
    """Read `path` and rename the user's columns to the Catalog's (`columns`: catalog -> user).

    Image paths stay as given: relative to the table's folder, or absolute.
    """
    if not path.exists():
        raise CatalogError(f"{path}: catalog table not found; set data.path and data.table.file in params.yaml.")
    if path.suffix.lower() == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        try:
            df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                             keep_default_na=False, na_values=[""], encoding=encoding)
        except UnicodeDecodeError as e:
            raise CatalogError(f"{path}: not valid {encoding} at byte {e.start}; set data.table.encoding "
                               "(e.g. latin-1) or re-save the file as UTF-8.") from e
    else:
        raise CatalogError(f"{path}: unsupported table type {path.suffix!r}; use .csv, .tsv or .parquet.")
    missing = {ours: theirs for ours, theirs in columns.items() if theirs not in df.columns}
    if missing:
        raise CatalogError(
            f"{path}: column(s) {sorted(missing.values())} (mapped to {sorted(missing)}) not found; "
            f"the file has {list(df.columns)}. Fix data.table.columns in params.yaml."
        )
    df = df.rename(columns={theirs: ours for ours, theirs in columns.items()})
    df["image_path"] = [str(path.parent / p) if isinstance(p, str) else p for p in df["image_path"]]
    return df
