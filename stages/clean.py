"""clean: rules cleaning -> data/clean/{catalog,rejected}.parquet and metrics/clean.json."""
import shutil
from pathlib import Path

from catalog_search import catalog
from catalog_search.cleaning import clean_catalog
from catalog_search.io import write_json
from catalog_search.checks import validate
from catalog_search.params import load_params

RAW, OUT = Path("data/raw/catalog.parquet"), Path("data/clean")

if __name__ == "__main__":
    all_params = load_params()
    validate(all_params)
    params = all_params["clean"]
    shutil.rmtree(OUT, ignore_errors=True)
    kept, rejected, metrics = clean_catalog(catalog.load(RAW), RAW, OUT, params)
    catalog.save(kept, OUT / "catalog.parquet")
    catalog.save(rejected, OUT / "rejected.parquet")
    write_json("metrics/clean.json", metrics)
    for message in rejected["message"].head(20):
        print(f"clean: rejected: {message}")
    print(f"clean: kept {metrics['rows_kept']} / {metrics['rows_in']}, rejected {metrics['rejected_by_reason']}")
