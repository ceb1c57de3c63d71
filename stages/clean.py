"""clean: data/raw -> data/clean/{catalog,rejected}.parquet + images/, and metrics/clean.json.

clean.backend rules: offline rules. openai_batch: the rules, then a VLM through the OpenAI Batch
API; a re-run resumes from its ledger (clean.openai_batch.state_dir). `--dry-run` prints what
would be sent and its estimated cost, and sends nothing."""
import shutil
import sys
from pathlib import Path

from catalog_search.config import start

RAW, OUT = Path("data/raw/catalog.parquet"), Path("data/clean")

if __name__ == "__main__":
    all_params = start().model_dump()

    import pandas as pd

    from catalog_search.cleaning.rules import clean_catalog
    from catalog_search.io import write_json

    cfg = all_params["clean"]
    if cfg["backend"] == "openai_batch":
        from catalog_search.cleaning.openai_batch.workflow import run_step

        sys.exit(run_step("all", RAW, OUT, cfg, dry_run="--dry-run" in sys.argv))
    shutil.rmtree(OUT, ignore_errors=True)
    try:
        metrics = clean_catalog(RAW, OUT, cfg)
        write_json("metrics/clean.json", metrics)
    finally:  # the first reasons on the console; all of them are in rejected.parquet
        if (OUT / "rejected.parquet").exists():
            for message in pd.read_parquet(OUT / "rejected.parquet", columns=["message"])["message"].head(20):
                print(f"clean: rejected: {message}")
    print(f"clean: kept {metrics['rows_kept']} / {metrics['rows_in']}, rejected {metrics['rejected_by_reason']}, "
          f"duplicates grouped {metrics['duplicates_grouped']}")
