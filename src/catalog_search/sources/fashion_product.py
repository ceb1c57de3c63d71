"""The Hugging Face "Fashion Product Images" layout: parquet files with the product's fields and an
`image` column of `{bytes, path}`; the category hierarchy maps onto the Catalog's attributes."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from catalog_search.catalog import CatalogError, row_source
from catalog_search.sources.embedded import ImageWriter, source_files

# the dataset's column -> the Catalog's
COLUMNS = {
    "id": "product_id", "productDisplayName": "title_raw", "gender": "gender", "masterCategory": "category",
    "subCategory": "subcategory", "articleType": "article_type", "baseColour": "color", "season": "season",
    "usage": "usage", "year": "year",
}
EXPECTED = [*COLUMNS, "image"]


def read_fashion_product(folder: Path, files: str, out_dir: Path, batch_rows: int = 1000) -> pd.DataFrame:
    """Read every parquet file matching `files` under `folder`, streaming row groups (images are large)."""
    images = ImageWriter(out_dir, "fp")
    parts = []
    for path in source_files(folder, files, "parquet files", "data.fashion_product.files"):
        parquet = pq.ParquetFile(path)
        missing = [c for c in EXPECTED if c not in parquet.schema_arrow.names]
        if missing:
            raise CatalogError(f"{path}: missing column(s) {missing}; the fashion_product reader expects the "
                               f"Fashion Product Images layout {EXPECTED} (image = struct of bytes, path). "
                               f"The file has {parquet.schema_arrow.names}; for other layouts use data.source: table.")
        _check_image_column(path, parquet.schema_arrow.field("image").type)
        row = 0
        with tqdm(total=parquet.metadata.num_rows, desc=f"ingest {path.name}", unit="row") as bar:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=EXPECTED):
                df = batch.to_pandas()
                df["image_path"] = [images.write(*_bytes_and_name(img)) for img in df.pop("image")]
                df["source"] = [row_source(path, row + i) for i in range(len(df))]
                parts.append(df.rename(columns=COLUMNS))
                row += len(df)
                bar.update(len(df))
    df = pd.concat(parts, ignore_index=True)
    df["product_id"] = df["product_id"].map(lambda v: None if pd.isna(v) else str(v))
    df["year"] = df["year"].map(lambda v: None if pd.isna(v) else str(int(float(v))))
    return df


def _check_image_column(path: Path, kind: pa.DataType) -> None:
    """Stop on an `image` column without embedded bytes (e.g. file names): ingest would pass it and
    clean would then reject every row for a missing image."""
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0 and \
            kind.field("bytes").type in (pa.binary(), pa.large_binary()):
        return
    raise CatalogError(f"{path}: column 'image' is {kind}; the fashion_product reader expects a struct "
                       "{bytes: the encoded image, path: its file name} per row, as Hugging Face datasets write "
                       "an Image column. For a table of image file names or URLs use data.source: table "
                       "(data.table.columns.image_path: image).")


def _bytes_and_name(image) -> tuple[bytes | None, str | None]:
    if not isinstance(image, dict):
        return None, None
    return image.get("bytes"), image.get("path")
