"""The `catalog-search` command.

    catalog-search search "black maxi dress" --scenario dual_lora -k 10 [--json]
    catalog-search search "black maxi dress" --text-embedder [-k 10] [--json]

Run it in the project folder after `dvc repro`: it reads params.yaml, models/ and data/.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def search_scenario(query: str, scenario: str, k: int) -> list[dict]:
    """Text -> image search over the embed stage's FAISS index, with that scenario's merged model."""
    import faiss
    import open_clip
    import torch

    from catalog_search.evaluation import normalise

    folder, merged = Path("data/embeddings") / scenario, f"local-dir:models/{scenario}/merged"
    if not (folder / "image.faiss").exists():
        raise SystemExit(f"no index in {folder}: run `dvc repro embed@{scenario}` first")
    index = faiss.read_index(str(folder / "image.faiss"))
    items = pd.read_parquet(folder / "items.parquet")
    model = open_clip.create_model(merged).eval()
    with torch.no_grad():
        q = normalise(model.encode_text(open_clip.get_tokenizer(merged)([query])).numpy())
    if q.shape[1] != index.d:
        raise SystemExit(f"models/{scenario} embeds to {q.shape[1]} dims but {folder}/image.faiss holds {index.d}: "
                         f"re-run `dvc repro embed@{scenario}`")
    scores, ids = index.search(q, min(k, index.ntotal))
    return [{"rank": r + 1, "product_id": items.at[i, "product_id"], "title": items.at[i, "title"], "score": round(float(s), 4)}
            for r, (i, s) in enumerate(zip(ids[0], scores[0]))]


def search_text_embedder(query: str, k: int) -> list[dict]:
    """Query -> product description search over the clean catalog with the tuned text embedder."""
    import faiss

    from catalog_search import catalog
    from catalog_search.params import load_params
    from catalog_search.text_embedder import load_model

    p = load_params()["text_embedder"]
    products = catalog.load("data/clean/catalog.parquet")
    products = products[products["description"].fillna("").str.len() > 0].reset_index(drop=True)
    model = load_model(p["base"], "models/text_embedder", max_length=p["max_length"])
    docs = model.encode(products["description"].tolist(), batch_size=128, convert_to_numpy=True)
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(np.asarray(docs, np.float32))
    scores, ids = index.search(np.asarray(model.encode([query], convert_to_numpy=True), np.float32), min(k, len(products)))
    return [{"rank": r + 1, "product_id": products.at[i, "product_id"], "title": products.at[i, "title"],
             "description": products.at[i, "description"], "score": round(float(s), 4)}
            for r, (i, s) in enumerate(zip(ids[0], scores[0]))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="catalog-search", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="rank products for a text query")
    s.add_argument("query")
    s.add_argument("--scenario", default="dual_lora", help="trained scenario whose model and index to use")
    s.add_argument("--text-embedder", action="store_true", help="rank product descriptions with models/text_embedder")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true", help="print JSON lines for scripts")
    args = parser.parse_args(argv)
    results = search_text_embedder(args.query, args.k) if args.text_embedder else search_scenario(args.query, args.scenario, args.k)
    for row in results:
        print(json.dumps(row) if args.json else f"{row['rank']:>3}  {row['score']:.3f}  {row['product_id']}  {row['title']}")


if __name__ == "__main__":
    main(sys.argv[1:])
