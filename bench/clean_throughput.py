"""Clean + shard throughput vs a bare PIL loop over the same images (decode, RGB, resize to the
storage size, re-encode), on this machine's cores. Prints JSON.

The bare loop runs once in one process and once in a pool of `clean.workers` processes: the
second is the like-for-like baseline for clean, which uses that many workers.

    python bench/clean_throughput.py --n 2000 --size 800 --fmt jpg   # marketplace-size photos
    python bench/clean_throughput.py --n 4000 --size 96 --fmt png    # demo-size images
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from _catalog import clean_params, raw_catalog, write_images
from catalog_search import catalog
from catalog_search.cleaning.rules import clean_catalog
from catalog_search.shards import assign_splits, write_shards


def bare(task: tuple[Path, Path, int, str]) -> None:
    src, dst, max_size, fmt = task
    with Image.open(src) as img:
        rgb = img.convert("RGB")
    rgb.thumbnail((max_size, max_size), Image.BICUBIC)
    rgb.save(dst.with_suffix(f".{fmt}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=800)
    ap.add_argument("--fmt", default="jpg")
    ap.add_argument("--cache", default=str(Path(__file__).resolve().parents[1] / "bench-out" / "clean-images"), help="generated images are reused from here")
    args = ap.parse_args()
    cfg = clean_params()
    images = write_images(Path(args.cache) / f"{args.size}{args.fmt}", args.n, args.size, args.fmt)
    for p in images:  # warm the page cache: every contender reads from memory
        p.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "bare").mkdir()
        tasks = [(p, tmp / "bare" / p.stem, cfg["image"]["max_size"], cfg["image"]["format"]) for p in images]
        t = time.perf_counter()
        for task in tasks:
            bare(task)
        bare_1 = time.perf_counter() - t
        with multiprocessing.get_context("forkserver").Pool(cfg["workers"]) as pool:
            pool.map(bare, tasks[:8])  # start-up outside the timing, as for a long clean
            t = time.perf_counter()
            pool.map(bare, tasks, chunksize=32)
            bare_n = time.perf_counter() - t

        raw = raw_catalog(tmp, images, tmp / "raw")
        t = time.perf_counter()
        metrics = clean_catalog(raw, tmp / "clean", cfg)
        clean_s = time.perf_counter() - t
        t = time.perf_counter()
        df = catalog.load(tmp / "clean" / "catalog.parquet")
        df["split"] = assign_splits(df, 0.1, 0.15, None, 0)
        df["mini_train"] = False
        write_shards(df, tmp / "clean" / "catalog.parquet", tmp / "shards", 1000)
        shard_s = time.perf_counter() - t
        shutil.rmtree(tmp / "bare")
    n = len(images)
    print(json.dumps({
        "images": n, "size": args.size, "format": args.fmt, "workers": cfg["workers"], "kept": metrics["rows_kept"],
        "bare_1proc_img_s": round(n / bare_1, 1), f"bare_{cfg['workers']}proc_img_s": round(n / bare_n, 1),
        "clean_img_s": round(n / clean_s, 1), "shard_img_s": round(n / shard_s, 1),
        "clean_shard_img_s": round(n / (clean_s + shard_s), 1),
        "ratio_vs_bare_1proc": round(bare_1 / (clean_s + shard_s), 3),
        f"ratio_vs_bare_{cfg['workers']}proc": round(bare_n / (clean_s + shard_s), 3),
    }, indent=2))


if __name__ == "__main__":
    main()
