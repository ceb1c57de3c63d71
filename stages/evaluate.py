"""evaluate@<scenario>: every retrieval protocol on the test split -> metrics/eval/<scenario>.json,
reports/recall_at_k/<scenario>.json, and the per-query scores the report pairs across scenarios
(data/eval/<scenario>.npz).

Protocols (README "Evaluation protocols"): captions <-> images (multi-positive), title -> image,
attribute -> product, and sampled-100 in both directions.
"""
import sys
from pathlib import Path

from catalog_search.config import start

if __name__ == "__main__":
    name = sys.argv[1]
    p = start().evaluate.model_dump()

    import numpy as np
    import pandas as pd

    from catalog_search.catalog import ATTRIBUTES
    from catalog_search.evaluation import (attribute_queries, bootstrap_ci, caption_positives, mean_ci, precision_at,
                                           rank_metrics, recall_curve, retrieval_metrics, sampled_ranks, title_positives)
    from catalog_search.evaluation import ranks as rank_of
    from catalog_search.index import load_embeddings
    from catalog_search.io import atomic_path, write_json

    folder = Path("data/embeddings") / name
    images, texts, items, text_rows, info = load_embeddings(folder)
    unique_texts, i2t, t2i = caption_positives(items["captions"].map(list).tolist())
    assert unique_texts == text_rows["text"].tolist(), "texts.parquet does not match the items' captions"
    metrics, per_query = retrieval_metrics(images, texts, i2t, t2i)
    ci = bootstrap_ci(per_query, n=p["bootstrap"])

    titles = np.load(folder / "titles.npy")
    title_list = items["title"].fillna("").astype(str).str.strip().tolist()
    title_list = [t or caps[0] for t, caps in zip(title_list, items["captions"])]
    per_query["title_to_image"] = rank_of(titles, images, title_positives(title_list))

    s = p["sampled"]
    per_query.update(sampled_ranks(titles, images, items[s["group_by"]].fillna("unknown").tolist(), title_list,
                                   s["queries"], s["negatives"], p["seed"]))
    for key in ("title_to_image", "sampled100_text_to_image", "sampled100_image_to_text"):
        metrics.update({k: round(v, 4) for k, v in rank_metrics(per_query[key], key).items()})
        ci.update(bootstrap_ci({key: per_query[key]}, n=p["bootstrap"]))

    queries = pd.read_parquet(folder / "queries.parquet")
    keep = queries["attribute"].isin(p["attributes"]).to_numpy()
    asked = [a for a in ATTRIBUTES if a in p["attributes"]]  # embed wrote every attribute's values, in this order
    wanted, relevant = attribute_queries(items.to_dict("records"), asked)
    assert wanted == list(zip(queries["attribute"][keep], queries["value"][keep])), "queries.parquet is stale"
    by_attribute = {}
    if wanted:
        scores = precision_at(np.load(folder / "queries.npy")[keep], images, relevant)
        for k, v in scores.items():
            per_query[f"attribute_{k}"] = v
            metrics[f"attribute_{k.replace('rr', 'mrr')}"] = round(float(v.mean()), 4)
            ci[f"attribute_{k.replace('rr', 'mrr')}"] = mean_ci(v, p["bootstrap"])
        names = np.array([a for a, _ in wanted])
        by_attribute = {a: {"queries": int((names == a).sum()),
                            **{k.replace("rr", "mrr"): round(float(v[names == a].mean()), 4) for k, v in scores.items()}}
                        for a in dict.fromkeys(names)}

    write_json(f"metrics/eval/{name}.json", {**metrics, "n_images": info["n_images"], "n_texts": info["n_texts"],
                                             "n_title_queries": len(title_list), "n_attribute_queries": len(wanted),
                                             "attribute_queries": by_attribute, "ci95": ci})
    write_json(f"reports/recall_at_k/{name}.json",
               recall_curve({k: per_query[k] for k in ("text_to_image", "image_to_text")}, p["max_k"]))
    with atomic_path(Path("data/eval") / f"{name}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **per_query)
    print(f"evaluate@{name}: " + ", ".join(f"{k} {v}" for k, v in metrics.items()
                                           if k.endswith(("R@10", "P@10")) or k == "title_to_image_mrr"))
