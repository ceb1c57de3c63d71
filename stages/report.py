"""report: every scenario side by side -> reports/summary.md, metrics/summary.json, reports/recall_at_k.png,
reports/top5.png (each scenario's top-5 images for a fixed set of test titles)."""
import json
import os
import platform
from datetime import date
from pathlib import Path

from catalog_search.config import start

SHARDS = Path("data/shards")

if __name__ == "__main__":
    params = start().model_dump()

    from catalog_search.io import write_json, write_text
    from catalog_search.report import gallery, gallery_queries, markdown, plot_recall, summarise, wise_ft_markdown
    from catalog_search.shards import iter_samples

    scenarios, p = params["train"]["scenarios"], params["report"]
    clean = json.loads(Path("metrics/clean.json").read_text())
    manifest = json.loads((SHARDS / "manifest.json").read_text())
    first = json.loads((Path("metrics/eval") / f"{scenarios[0]}.json").read_text())
    counts = {"products_in": clean["rows_in"], "products_kept": clean["rows_kept"],
              "train_images": manifest["splits"]["train"]["samples"], "test_images": first["n_images"],
              "caption_queries": first["n_texts"], "attribute_queries": first["n_attribute_queries"],
              "sampled_queries": min(params["evaluate"]["sampled"]["queries"], first["n_images"])}
    summary = summarise(scenarios, Path("metrics/eval"), Path("metrics/train"), Path("data/eval"), counts,
                        params["evaluate"]["bootstrap"], params["evaluate"]["seed"])
    curves = {s: json.loads((Path("metrics/wise_ft") / f"{s}.json").read_text()) for s in params["wise_ft"]["scenarios"]}
    write_json("metrics/summary.json", {**summary, "wise_ft": {s: w["curve"] for s, w in curves.items()}})
    header = f"# Scenario comparison\n\nTest split; {date.today()}; {platform.machine()}, {os.cpu_count()} CPU cores\n"
    write_text("reports/summary.md", markdown(summary, header) + wise_ft_markdown(curves))
    plot_recall(scenarios, Path("reports/recall_at_k"), Path("reports/recall_at_k.png"))
    samples = list(iter_samples(SHARDS, params["embed"]["split"]))  # the order embed used: row i = image i
    queries = gallery_queries([s.get("subcategory") for s in samples], p["gallery_queries"], p["seed"])
    gallery(scenarios, Path("data/embeddings"), [s["image"] for s in samples], queries, Path("reports/top5.png"))
    print(markdown(summary))
