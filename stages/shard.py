"""shard: group-aware splits + WebDataset tars per split + manifest -> data/shards/."""
import shutil
from pathlib import Path

from catalog_search.config import start

CLEAN, OUT = Path("data/clean/catalog.parquet"), Path("data/shards")

if __name__ == "__main__":
    all_params = start().model_dump()

    from catalog_search import catalog
    from catalog_search.shards import assign_splits, save_manifest, write_shards

    p = all_params["shard"]
    df = catalog.load(CLEAN)
    df["split"] = assign_splits(df, p["val_fraction"], p["test_fraction"], p["stratify_by"], p["seed"])
    train = df.index[df["split"] == "train"]
    df["mini_train"] = df.index.isin(df.loc[train].sample(min(p["mini_train_size"], len(train)), random_state=p["seed"]).index)
    shutil.rmtree(OUT, ignore_errors=True)
    manifest = write_shards(df, CLEAN, OUT, p["samples_per_shard"])
    save_manifest(OUT, manifest)
    print("shard: " + ", ".join(f"{s}={v['samples']}" for s, v in manifest["splits"].items()))
