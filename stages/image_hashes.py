"""image_hashes: sha256 of the image files the catalog reads in place -> data/image_hashes.json.

The table source reads its images where they lie, possibly outside data.path, where DVC sees no
change. This stage runs on every `dvc repro` (always_changed) and clean depends on what it writes:
a picture overwritten in place re-runs clean and what follows it, and only that. The other
sources write {}: their images are ingest's output (data/raw), which DVC hashes itself.
"""
from pathlib import Path

from catalog_search.config import start

OUT = Path("data/image_hashes.json")

if __name__ == "__main__":
    data = start().model_dump()["data"]

    from catalog_search.io import write_json

    hashes: dict[str, str | None] = {}
    if data["source"] == "table":  # imported only here: the readers import pandas and h5py
        from catalog_search.sources import table_image_hashes

        hashes = table_image_hashes(data)
    write_json(OUT, hashes)
    print(f"image_hashes: {len(hashes)} image files read in place -> {OUT}")
