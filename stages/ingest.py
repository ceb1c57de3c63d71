"""ingest: read `data.source` into data/raw/catalog.parquet (images the source creates go beside it)."""
import shutil
from pathlib import Path

from catalog_search import catalog
from catalog_search.checks import validate
from catalog_search.params import load_params
from catalog_search.sources import ingest

OUT = Path("data/raw")

if __name__ == "__main__":
    all_params = load_params()
    validate(all_params)
    params = all_params["data"]
    shutil.rmtree(OUT, ignore_errors=True)
    df = ingest(params, OUT)
    catalog.save(df, OUT / "catalog.parquet")
    print(f"ingest: {len(df)} rows from source {params['source']!r} -> {OUT / 'catalog.parquet'}")
