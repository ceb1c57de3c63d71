"""ingest: read `data.source` into data/raw/catalog.parquet (images the source creates go beside it)."""
import shutil
from pathlib import Path

from catalog_search.config import start

OUT = Path("data/raw")

if __name__ == "__main__":
    all_params = start().model_dump()

    from catalog_search import catalog
    from catalog_search.sources import ingest

    params = all_params["data"]
    shutil.rmtree(OUT, ignore_errors=True)
    df = ingest(params, OUT)
    catalog.save(df, OUT / "catalog.parquet")
    print(f"ingest: {len(df)} rows from source {params['source']!r} -> {OUT / 'catalog.parquet'}")
