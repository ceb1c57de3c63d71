"""evaluate@<scenario>: retrieval metrics -> metrics/eval/<scenario>.json + reports/recall_at_k/<scenario>.json."""
import sys
from pathlib import Path

from catalog_search.evaluation import bootstrap_ci, caption_positives, recall_curve, retrieval_metrics
from catalog_search.index import load_embeddings
from catalog_search.io import write_json
from catalog_search.params import load_params

if __name__ == "__main__":
    name = sys.argv[1]
    p = load_params()["evaluate"]
    images, texts, items, text_rows, info = load_embeddings(Path("data/embeddings") / name)
    unique_texts, i2t, t2i = caption_positives(items["captions"].map(list).tolist())
    assert unique_texts == text_rows["text"].tolist(), "texts.parquet does not match the items' captions"
    metrics, ranks = retrieval_metrics(images, texts, i2t, t2i)
    write_json(f"metrics/eval/{name}.json", {**metrics, "n_images": info["n_images"], "n_texts": info["n_texts"],
                                             "ci95": bootstrap_ci(ranks, n=p["bootstrap"])})
    write_json(f"reports/recall_at_k/{name}.json", recall_curve(ranks, p["max_k"]))
    print(f"evaluate@{name}: " + ", ".join(f"{k} {v}" for k, v in metrics.items() if "R@" in k))
