"""Fashion-Gen HDF5 files: images as uint8 arrays plus byte-string fields, read lazily with h5py.

Fashion-Gen has several photos (poses) per product: each photo is a Catalog row
`<productID>-<k>`, and all of them share the product's group_id so they stay in one split.
"""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from catalog_search.catalog import CatalogError
from catalog_search.sources.embedded import ImageWriter, source_files, text

# the file's dataset -> the Catalog's column
FIELDS = {"input_name": "title_raw", "input_description": "description", "input_category": "category",
          "input_subcategory": "subcategory"}
EXPECTED = ["input_image", "input_productID", *FIELDS]
# read where the file has them; brand and pose have no Catalog column and stay as extra columns
OPTIONAL = {"input_gender": "gender", "input_season": "season", "input_brand": "brand", "input_pose": "pose"}


def read_fashiongen(folder: Path, files: str, out_dir: Path, batch_rows: int = 256) -> pd.DataFrame:
    """Read every HDF5 file matching `files` under `folder`, `batch_rows` images in memory at a time."""
    images = ImageWriter(out_dir, "fg")
    rows, poses = [], Counter()
    for path in source_files(folder, files, "HDF5 files", "data.fashiongen.files"):
        with h5py.File(path, "r") as h5:
            missing = [k for k in EXPECTED if k not in h5]
            if missing:
                raise CatalogError(f"{path}: missing dataset(s) {missing}; the fashiongen reader expects the "
                                   f"Fashion-Gen layout {EXPECTED} (input_image: N x H x W x 3 uint8). "
                                   f"The file has {sorted(h5.keys())}.")
            read = {**FIELDS, **{k: ours for k, ours in OPTIONAL.items() if k in h5}}
            n = len(h5["input_image"])
            for start in tqdm(range(0, n, batch_rows), desc=f"ingest {path.name}", unit="batch"):
                stop = min(start + batch_rows, n)
                pixels = h5["input_image"][start:stop]
                fields = {k: h5[k][start:stop].reshape(stop - start, -1)[:, 0] for k in ["input_productID", *read]}
                for i in range(stop - start):
                    product = text(fields["input_productID"][i]).strip()
                    poses[product] += 1
                    rows.append({
                        "product_id": f"{product}-{poses[product] - 1}", "group_id": product,
                        "image_path": images.write(_png(pixels[i]), None),
                        **{ours: text(fields[k][i]) for k, ours in read.items()},
                        "source": f"{path} index {start + i}",
                    })
    return pd.DataFrame(rows)


def _png(pixels: np.ndarray) -> bytes:
    """Lossless, fast-compressed PNG of one HxWx3 array (clean re-encodes at its storage size)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
