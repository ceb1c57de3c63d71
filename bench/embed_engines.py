"""Serving-index embedding, local engine vs Ray Data (serve.engine), on the demo catalog with a
trained scenario's merged model: images/s of each, in one run, and the ratio. Prints JSON.

    python bench/embed_engines.py                        # models/dual_lora/merged over data/clean (4,000 images)
    python bench/embed_engines.py --images 1000 --actors 2

Each engine starts from an empty cache in a temp folder, so every image is embedded; Ray's time
includes starting the local Ray and its actors (loading one model each), as a run would pay it.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from catalog_search import catalog
from catalog_search.serving.catalog_index import build_image_index
from catalog_search.serving.encoders import load_encoder
from catalog_search.serving.ray_engine import ray_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenario", default="dual_lora")
    ap.add_argument("--images", type=int, default=None, help="first N products (default: all)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    merged = Path("models") / args.scenario / "merged"
    work = Path(tempfile.mkdtemp(prefix="bench-embed-engines-"))
    rows = catalog.load("data/clean/catalog.parquet")
    if args.images:
        rows = rows.head(args.images)
    source = Path("data/clean/catalog.parquet").resolve()
    rows = rows.assign(image_path=[str(catalog.resolve_image(source, p)) for p in rows["image_path"]])
    catalog.save(rows, work / "catalog.parquet")
    encoder = load_encoder("torch", merged)
    result = {"images": len(rows), "scenario": args.scenario, "cpus": os.cpu_count()}
    for engine, ray_encode in (("local", None), ("ray", ray_encoder("torch", merged, args.batch, args.actors, None))):
        start = time.perf_counter()
        counts = build_image_index(work / "catalog.parquet", None, encoder, work / engine, work / f"{engine}-cache",
                                   args.batch, {}, ray_encode=ray_encode)
        seconds = time.perf_counter() - start
        assert counts["embedded"] == len(rows)
        result[engine] = {"seconds": round(seconds, 1), "images_per_s": round(len(rows) / seconds, 1)}
    result["ray_over_local"] = round(result["ray"]["images_per_s"] / result["local"]["images_per_s"], 2)
    print(json.dumps(result, indent=2))
