"""Peak memory of clean as the catalog grows: the same synthetic catalog at 10k and 100k rows,
each cleaned in a fresh process while the resident memory of its whole process tree (main +
image workers) is sampled. Flat means the 100k peak is close to the 10k one. Prints JSON.

    python bench/clean_memory.py --rows 10000 100000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from _catalog import raw_catalog, write_images

CLEAN = """
import json, sys
from pathlib import Path
sys.path.insert(0, {bench!r})
from _catalog import clean_params
from catalog_search.cleaning.rules import clean_catalog
print(json.dumps(clean_catalog(Path({raw!r}), Path({out!r}), clean_params())))
"""


def peak_rss(cmd: list[str]) -> tuple[int, int, str]:
    """(peak RSS of the process tree, peak RSS of the main process, stdout), sampled every 20 ms."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    main, tree_peak, main_peak = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            rss = [main.memory_info().rss] + [c.memory_info().rss for c in main.children(recursive=True)]
        except psutil.Error:  # a worker ended between listing and reading
            continue
        tree_peak, main_peak = max(tree_peak, sum(rss)), max(main_peak, rss[0])
        time.sleep(0.02)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"clean failed ({proc.returncode}): {out}")
    return tree_peak, main_peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--size", type=int, default=48, help="image side; small so 100k images fit on disk quickly")
    ap.add_argument("--cache", default=str(Path(__file__).resolve().parents[1] / "bench-out" / "clean-images"))
    args = ap.parse_args()
    images = write_images(Path(args.cache) / f"{args.size}png", max(args.rows), args.size, "png")
    results = {}
    for n in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            raw = raw_catalog(tmp, images[:n], tmp / "raw")
            t = time.perf_counter()
            code = CLEAN.format(bench=str(Path(__file__).parent), raw=str(raw), out=str(tmp / "clean"))
            tree, main_rss, out = peak_rss([sys.executable, "-c", code])
            metrics = json.loads(out.strip().splitlines()[-1])
            results[n] = {"rows_kept": metrics["rows_kept"], "seconds": round(time.perf_counter() - t, 1),
                          "peak_rss_tree_mb": round(tree / 2**20, 1), "peak_rss_main_mb": round(main_rss / 2**20, 1)}
    small, large = results[min(args.rows)], results[max(args.rows)]
    print(json.dumps({"rows": results,
                      "tree_peak_ratio_large_vs_small": round(large["peak_rss_tree_mb"] / small["peak_rss_tree_mb"], 3),
                      "main_peak_ratio_large_vs_small": round(large["peak_rss_main_mb"] / small["peak_rss_main_mb"], 3)},
                     indent=2))


if __name__ == "__main__":
    main()
