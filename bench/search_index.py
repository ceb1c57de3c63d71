"""Vector search speed: exact FAISS inner product at 100k and 1M vectors (batch and single-query
throughput), and the approximate index at 1M (p50/p99 single-query latency, recall@10 against
exact). Targets: recall@10 >= 0.95 with p50 <= 5 ms at 1M. Prints JSON.

    python bench/search_index.py [--sizes 100000 1000000] [--dim 512]

Vectors are a normalised Gaussian mixture (catalog embeddings cluster by product type; uniform
random vectors are the worst case for any approximate index, `--uniform` to see it), queries
are perturbed catalog vectors. This machine's thread count is what FAISS uses.
"""
import argparse
import json
import tempfile
import time

import faiss
import numpy as np

from catalog_search.evaluation import normalise
from catalog_search.index import build_index


def vectors(n: int, dim: int, rng: np.random.Generator, uniform: bool, centers: np.ndarray) -> np.ndarray:
    if uniform:
        return normalise(rng.standard_normal((n, dim), dtype=np.float32))
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # in chunks: bounded temporary memory
        m = min(100_000, n - s)
        out[s:s + m] = centers[rng.integers(len(centers), size=m)] + 0.5 * rng.standard_normal((m, dim), dtype=np.float32) / np.sqrt(dim)
    return normalise(out)


def single_latencies_ms(index, queries: np.ndarray) -> np.ndarray:
    out = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], 10)
        out.append((time.perf_counter() - start) * 1000)
    return np.asarray(out)


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--single", type=int, default=200)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--uniform", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centers = normalise(rng.standard_normal((2000, args.dim), dtype=np.float32))
    report = {"dim": args.dim, "threads": faiss.omp_get_max_threads(), "data": "uniform" if args.uniform else "mixture",
              "sizes": {}}
    for n in args.sizes:
        data = vectors(n, args.dim, rng, args.uniform, centers)
        queries = normalise(data[rng.integers(n, size=args.queries)] + 0.3 * rng.standard_normal(
            (args.queries, args.dim), dtype=np.float32) / np.sqrt(args.dim))
        flat = build_index(data, "flat")
        start = time.perf_counter()
        _, exact = flat.search(queries, 10)
        batch_s = time.perf_counter() - start
        lat = single_latencies_ms(flat, queries[: args.single])
        row = {"exact": {"batch_qps": round(args.queries / batch_s, 1), "single_qps": round(1000 / lat.mean(), 1),
                         "single_p50_ms": round(float(np.percentile(lat, 50)), 2)}}
        with tempfile.TemporaryDirectory() as tmp:  # what `search` pays to open the index
            faiss.write_index(flat, f"{tmp}/image.faiss")
            start = time.perf_counter()
            faiss.read_index(f"{tmp}/image.faiss")
            row["exact"]["load_s"] = round(time.perf_counter() - start, 3)
        if n == max(args.sizes):
            start = time.perf_counter()
            ivf = build_index(data, "ivf")
            row["ivf_build_s"] = round(time.perf_counter() - start, 1)
            row["ivf"] = []
            for nprobe in args.nprobe:
                ivf.nprobe = nprobe
                _, found = ivf.search(queries, 10)
                lat = single_latencies_ms(ivf, queries[: args.single])
                row["ivf"].append({"nprobe": nprobe, "recall_at_10": round(recall_at_10(found, exact), 4),
                                   "p50_ms": round(float(np.percentile(lat, 50)), 3),
                                   "p99_ms": round(float(np.percentile(lat, 99)), 3)})
        report["sizes"][str(n)] = row
        del flat, data
    print(json.dumps(report, indent=1))
