"""Your own catalog: a CSV or parquet file plus its images, column names mapped in params.

Images are paths relative to `image_root` (default: the table's folder) or absolute, or URLs
whose files were already downloaded into `url_folder` (this project never downloads at run time):
a URL is found there under its host/path (`wget -x` layout) or its file name.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from catalog_search.catalog import CatalogError, REQUIRED, row_source


def read_table(path: Path, columns: dict[str, str], encoding: str = "utf-8", image_root: str | None = None,
               url_folder: str | None = None) -> pd.DataFrame:
    """Read `path` and rename the user's columns to the Catalog's (`columns`: catalog -> user).

    A column the file already names as the Catalog does needs no entry; only the required ones must exist."""
    if not path.exists():
        raise CatalogError(f"{path}: catalog table not found; set data.path and data.table.file in params.yaml.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        df = _read_csv(path, "\t" if suffix == ".tsv" else ",", encoding)
    else:
        raise CatalogError(f"{path}: unsupported table type {path.suffix!r}; use .csv, .tsv or .parquet.")
    wanted = {**{c: c for c in REQUIRED}, **columns}
    missing = {ours: theirs for ours, theirs in wanted.items() if theirs not in df.columns}
    if missing:
        keys = ", ".join(f"data.table.columns.{ours}" for ours in missing)
        raise CatalogError(
            f"{path}: column(s) {list(missing.values())} not found; the file has {list(df.columns)}. Fix {keys} "
            f"in params.yaml: set each to the file's column for it (only {REQUIRED} are required; an optional "
            "entry can go)."
        )
    df = df.rename(columns={theirs: ours for ours, theirs in columns.items()})
    root = (path.parent / (image_root or "")).resolve()  # absolute: later stages read from elsewhere
    urls = None if url_folder is None else path.parent / url_folder  # an absolute url_folder stays absolute
    df["image_path"] = [_locate(p, root, urls) for p in df["image_path"]]
    df["source"] = [row_source(path, i) for i in range(len(df))]
    return df


def _read_csv(path: Path, sep: str, encoding: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding=encoding)
    except UnicodeDecodeError as e:
        data = path.read_bytes()
        try:  # pandas reports the offset inside its read buffer; find the file's own
            data.decode(encoding)
            start = e.start
        except UnicodeDecodeError as whole:
            start = whole.start
        line = data.count(b"\n", 0, start) + 1
        raise CatalogError(f"{path}: not valid {encoding} at byte {start} (line {line}: "
                           f"{data.splitlines()[line - 1][:80]!r}); set data.table.encoding (cp1252 for a Windows "
                           "export) or re-save the file as UTF-8.") from e


def _locate(value, root: Path, url_folder: Path | None) -> str | None:
    """A table's image value -> a local path (str), or the value unchanged when it cannot be found.

    An unresolved URL stays a URL: clean rejects that row with a message naming the folder to fill.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    if not value.startswith(("http://", "https://")):
        return str(root / value)
    if url_folder is None:
        return value
    url = urlparse(value)
    for candidate in (url_folder / url.netloc / unquote(url.path).lstrip("/"), url_folder / Path(unquote(url.path)).name):
        if candidate.is_file():
            return str(candidate)
    return value
