"""A synthetic catalog on disk for the clean benches (no torch): smooth random-coloured product
images (an 8x8 colour grid upscaled; distinct per row, so nothing is a duplicate) and a CSV that
the `table` source reads, ingested into the raw catalog parquet that clean streams through."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from catalog_search import catalog
from catalog_search.config import load_config
from catalog_search.sources import ingest

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

WORDS = "red blue black white green dress shirt coat sofa chair lamp striped floral plain wool cotton".split()


def write_images(folder: Path, n: int, size: int, fmt: str, seed: int = 0) -> list[Path]:
    """`n` images of size x size, written once and reused by later runs."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in tqdm(range(n), desc=f"images {size}px", unit="img"):
        path = folder / f"{i:07d}.{fmt}"
        grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        if not path.exists():
            Image.fromarray(grid).resize((size, size), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def raw_catalog(folder: Path, images: list[Path], out: Path) -> Path:
    """A CSV over `images` read by the table source -> `out/catalog.parquet` (ingest's output)."""
    rng = np.random.default_rng(1)
    titles = [" ".join(rng.choice(WORDS, 4)).title() + f" - SKU {i}" for i in range(len(images))]
    pd.DataFrame({"id": [f"p{i}" for i in range(len(images))], "image": [str(p) for p in images],
                  "title": titles}).to_csv(folder / "catalog.csv", index=False)
    data = load_config(PARAMS).data.model_dump()
    data.update(source="table", path=str(folder))
    data["table"].update(file="catalog.csv", columns={"product_id": "id", "image_path": "image", "title_raw": "title"})
    catalog.save(ingest(data, out), out / "catalog.parquet")
    return out / "catalog.parquet"


def clean_params() -> dict:
    """params.yaml's clean section, as the clean stage reads it."""
    return load_config(PARAMS).clean.model_dump()
