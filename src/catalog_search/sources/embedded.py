"""Sources that carry image bytes inside their files (parquet, HDF5, tar): ingest writes each image
out under `data/raw/images/` so every later stage sees the Catalog's plain file layout."""
from __future__ import annotations

from pathlib import Path

from catalog_search.catalog import CatalogError

_MAGIC = [(b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"), (b"BM", "bmp")]


def image_ext(data: bytes, name: str | None = None) -> str:
    """The file extension for encoded image bytes: from the name where it has one, else sniffed."""
    suffix = Path(name).suffix.lstrip(".").lower() if name else ""
    if suffix:
        return suffix
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), "img")


class ImageWriter:
    """Writes the embedded images of one source to `out_dir/images/<prefix>-<n>.<ext>`.

    Files are named by row ordinal, not by product id: a duplicated id in the source must not
    overwrite the first product's picture (clean reports the duplicate; nothing is lost).
    """

    def __init__(self, out_dir: Path, prefix: str):
        self.folder = out_dir / "images"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix, self.count = prefix, 0

    def write(self, data: bytes | None, name: str | None = None) -> str | None:
        """Store `data`; returns the catalog's image_path (None for a row without an image)."""
        self.count += 1
        if not data:
            return None
        file = f"{self.prefix}-{self.count - 1:08d}.{image_ext(data, name)}"
        (self.folder / file).write_bytes(data)
        return f"images/{file}"


def source_files(folder: Path, pattern: str, what: str, param: str) -> list[Path]:
    """The files matching `pattern` under `folder`, sorted; an error that says where it looked."""
    files = sorted(folder.glob(pattern))
    if not files:
        raise CatalogError(f"{folder}: no {what} matching {pattern!r}; set data.path and {param} in params.yaml.")
    return files


def text(value) -> str | None:
    """A byte or str value from a source as text: UTF-8, else Latin-1 (never an exception)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return str(value)
