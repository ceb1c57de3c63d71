"""serve_text_index: every product description, embedded once with models/text_embedder ->
data/serving/text_embedder/ (what `catalog-search search --text-embedder` queries; only the query
is encoded at search time). Incremental like serve_index, keyed by the description text."""
from pathlib import Path

from catalog_search.config import start

MODEL = Path("models/text_embedder")

if __name__ == "__main__":
    params = start().model_dump()

    from catalog_search.serving.catalog_index import build_text_index, folder_fingerprint
    from catalog_search.text_embedder import load_model

    p, t = params["serve"], params["text_embedder"]
    model = load_model(t["base"], MODEL, max_length=t["max_length"])
    counts = build_text_index(
        Path("data/clean/catalog.parquet"),
        lambda texts: model.encode(texts, batch_size=p["batch_size"], convert_to_numpy=True),
        f"{t['base']}+{folder_fingerprint(MODEL)}", Path("data/serving/text_embedder"),
        Path("data/serving_cache/text_embedder"), p["batch_size"], {"model": t["base"], "adapter": str(MODEL)})
    print(f"serve_text_index: {counts['products']} descriptions, {counts['embedded']} embedded, "
          f"{counts['reused']} reused, {counts['dropped']} dropped from the cache")
