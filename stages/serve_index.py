"""serve_index@<scenario>: every clean product's image, embedded with models/<scenario>/merged ->
data/serving/<scenario>/ (the index `catalog-search search` and `serve` query). Incremental: only
products whose image bytes are new to data/serving_cache/<scenario> are embedded."""
import sys
from pathlib import Path

from catalog_search.config import start

if __name__ == "__main__":
    name = sys.argv[1]
    p = start().serve

    from catalog_search.serving.catalog_index import build_image_index
    from catalog_search.serving.encoders import load_encoder
    from catalog_search.serving.ray_engine import ray_encoder

    merged = Path("models") / name / "merged"
    encoder = load_encoder("torch", merged)
    predictions = Path("data/attributes/predictions.jsonl") if p.fill_attributes else None
    engine = ray_encoder("torch", merged, p.ray.batch_size, p.ray.actors, p.ray.address) if p.engine == "ray" else None
    qdrant = {"url": p.qdrant.url, "collection": p.qdrant.collection or name} if p.index.backend == "qdrant" else None
    counts = build_image_index(Path("data/clean/catalog.parquet"), predictions, encoder, Path("data/serving") / name,
                               Path("data/serving_cache") / name, p.batch_size, {"scenario": name},
                               p.index.model_dump(), engine, qdrant)
    print(f"serve_index@{name}: {counts['products']} products, {counts['embedded']} embedded, {counts['reused']} "
          f"reused, {counts['dropped']} dropped from the cache; {counts['filled_values']} attribute values filled")
