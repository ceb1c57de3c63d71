"""End-to-end latency of `catalog-search serve` over real HTTP: the torch query encoder vs the ONNX
one on the demo catalog, then a synthetic large catalog with a flat and an HNSW index. Prints JSON.

    python bench/serve.py                          # default: --queries 200 --large 1000000
    python bench/serve.py --large 100000           # quick
    python bench/serve.py --skip-large             # the encoder comparison only

Everything is built in a temp folder (nothing is written to the repo): a project root whose
data/clean links to this checkout's demo catalog, a dual_lora serving index made by embedding
every demo product with models/dual_lora/merged (build_image_index, as serve_index does), and an
ONNX export of that model (export_onnx, as `catalog-search export-onnx` does).

Each mode is its own server process (`python -c` running serving.app.serve, the code behind
`catalog-search serve`, uvicorn on 127.0.0.1), so "torch never imported" is real for onnx. Per mode:
  startup_s        process start until GET /api/health answers (the encoder loads lazily, so:)
  first_text_s     the first text query (loads the encoder); ready_s = startup_s + first_text_s
  rss_mb           VmRSS after start-up, after warm-up and after all queries; VmHWM (peak)
  torch_imported   GET /api/health after the queries
  text / image     one client, --queries requests in a row (k=10): p50/p99/mean ms
  text_8 / image_8 the same count from --clients threads (one httpx.Client each): queries/s, p50/p99 ms
  server_cpu_ms_per_query  the server process's CPU time (all threads) per request: steadier than
                   latency when something else runs on the machine (loadavg_1m_* in the report)
Text queries are the catalog's distinct shopper queries; image queries upload the demo photos
(96 px PNGs, multipart). Clients and server share this machine's cores, so compare the ratios
within a run, not absolute figures across machines.

Large (`--large N`, onnx encoder, text queries only): N synthetic products, each a demo product's
vector plus Gaussian noise (norm ~0.5, renormalised; clusters like real catalog embeddings,
bench/search_index.py measures recall on such data) with the demo product's title, attributes and
photo and a unique id. One index with serve.index kind flat and one with hnsw (params.yaml's
defaults: M=32, efConstruction=200, efSearch=128); build_s is FAISS's build alone.

Runtime on the 2-core dev box: --large 100000 ~3 min (quiet machine: prep 20 s, demo servers 1 min,
HNSW build 30 s); --skip-large ~1.5 min. The default (1M) took 22 min with another developer's
pipeline running: its HNSW build alone was 10 min (large.hnsw.build_s), the flat 1M server 2 min
(~0.35 s a query), so it does not fit in 10 minutes; use --large 100000 for a quick run. Torch's
sequential figures are very sensitive to other load (its intra-op threads spin-wait for a core:
30 ms a text query on a quiet machine, 540 ms beside a training run); compare loadavg_1m_*.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCENARIO = "dual_lora"
K = 10
SERVER = """
from pathlib import Path
from catalog_search.config import load_config
from catalog_search.serving.app import serve
cfg = load_config({params!r}).serve.model_copy(update=dict(scenarios=[{scenario!r}], encoder={encoder!r}, port={port}))
serve(Path({root!r}), cfg, None, Path("votes.sqlite"))
"""


def log(msg: str) -> None:
    print(f"[serve bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def project_root(folder: Path) -> Path:
    """A project root under `folder` whose data/clean is this checkout's demo catalog."""
    (folder / "data").mkdir(parents=True)
    (folder / "data/clean").symlink_to(REPO / "data/clean")
    (folder / "models" / SCENARIO).mkdir(parents=True)
    return folder


def prepare_demo(tmp: Path, batch_size: int) -> tuple[Path, dict]:
    """The demo root: merged model (linked), its ONNX export, the serving index embedded with it."""
    from catalog_search.serving.catalog_index import build_image_index
    from catalog_search.serving.encoders import load_encoder
    from catalog_search.serving.onnx_export import export_onnx

    root = project_root(tmp / "demo")
    models = root / "models" / SCENARIO
    (models / "merged").symlink_to(REPO / "models" / SCENARIO / "merged")
    start = time.perf_counter()
    (root / "models/onnx").mkdir(parents=True, exist_ok=True)
    export_onnx(models / "merged", root / "models/onnx" / SCENARIO)
    export_s = time.perf_counter() - start
    log(f"onnx export {export_s:.1f} s")
    start = time.perf_counter()
    encoder = load_encoder("torch", models / "merged")
    counts = build_image_index(root / "data/clean/catalog.parquet", None, encoder, root / "data/serving" / SCENARIO,
                               tmp / "serving_cache", batch_size, {"scenario": SCENARIO})
    embed_s = time.perf_counter() - start
    log(f"demo serving index: {counts['products']} products in {embed_s:.1f} s")
    return root, {"onnx_export_s": round(export_s, 1), "demo_index_s": round(embed_s, 1),
                  "demo_products": counts["products"]}


def prepare_large(tmp: Path, demo: Path, n: int, kinds: list[str]) -> tuple[dict[str, Path], dict]:
    """One root per index kind over the same N synthetic products (vectors and table written once, linked)."""
    from catalog_search.config import load_config
    from catalog_search.evaluation import normalise
    from catalog_search.index import build_index
    from catalog_search.io import write_json

    served = demo / "data/serving" / SCENARIO
    base = np.load(served / "images.npy")
    demo_items = pd.read_parquet(served / "items.parquet")
    info = json.loads((served / "info.json").read_text())
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    rows = rng.integers(len(base), size=n)
    dim = base.shape[1]
    vectors = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # in chunks: bounded temporary memory
        m = min(100_000, n - s)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.5 / np.sqrt(dim))
        vectors[s:s + m] = base[rows[s:s + m]] + noise
    vectors = normalise(vectors)
    items = demo_items.iloc[rows].reset_index(drop=True)
    items["product_id"] = [f"syn-{i:07d}" for i in range(n)]
    shared = tmp / "large-data"
    shared.mkdir()
    np.save(shared / "images.npy", vectors)
    items.to_parquet(shared / "items.parquet", index=False)
    del items
    generate_s = time.perf_counter() - start
    log(f"{n} synthetic products in {generate_s:.1f} s")
    roots, report = {}, {"products": n, "dim": dim, "generate_s": round(generate_s, 1)}
    for kind in kinds:
        root = project_root(tmp / f"large-{kind}")
        (root / "models/onnx").mkdir(parents=True, exist_ok=True)
        (root / "models/onnx" / SCENARIO).symlink_to(demo / "models/onnx" / SCENARIO)
        out = root / "data/serving" / SCENARIO
        out.mkdir(parents=True)
        for name in ("images.npy", "items.parquet"):
            (out / name).symlink_to(shared / name)
        defaults = load_config(REPO / "params.yaml").serve.index  # FAISS's keys only
        params = {"kind": kind, **({} if kind == "flat" else {key: getattr(defaults, key) for key in
                                                            ("hnsw_m", "ef_construction", "ef_search")})}
        start = time.perf_counter()
        index = build_index(vectors, **params)
        build_s = time.perf_counter() - start
        import faiss

        faiss.write_index(index, str(out / "image.faiss"))
        del index
        # what save_index writes; the fingerprint is the demo model's, so its ONNX encoder is accepted
        write_json(out / "info.json", {"scenario": SCENARIO, "model_fingerprint": info["model_fingerprint"],
                                       "synthetic": True, "dim": dim, "n_images": n, "index": params})
        log(f"{kind} index over {n}: {build_s:.1f} s")
        roots[kind] = root
        report[kind] = {"index": params, "build_s": round(build_s, 1)}
    return roots, report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: round(int(status[key].split()[0]) / 1024, 1) for key in ("VmRSS", "VmHWM")}


def stats_ms(latencies: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def text_request(queries: list[str]):
    def request(client: httpx.Client, i: int) -> httpx.Response:
        return client.get("/api/search", params={"q": queries[i % len(queries)], "k": K})
    return request


def image_request(photos: list[tuple[str, bytes]]):
    def request(client: httpx.Client, i: int) -> httpx.Response:
        name, data = photos[i % len(photos)]
        return client.post("/api/search/image", params={"k": K}, files={"image": (name, data, "image/png")})
    return request


def ok(response: httpx.Response) -> bool:
    return response.status_code == 200 and len(response.json()["results"]) == K


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sequential(url: str, request, n: int, pid: int, offset: int = 0) -> dict:
    latencies, errors, cpu = [], 0, cpu_s(pid)
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(n):
            start = time.perf_counter()
            response = request(client, offset + i)
            latencies.append(time.perf_counter() - start)
            errors += not ok(response)
    return {**stats_ms(latencies), "server_cpu_ms_per_query": round((cpu_s(pid) - cpu) / n * 1000, 2), "errors": errors}


def concurrent(url: str, request, n: int, clients: int, pid: int, offset: int = 0) -> dict:
    """`n` requests from `clients` threads, each with its own keep-alive connection; queries/s over the wall time."""
    latencies, errors, lock = [], [0], threading.Lock()
    jobs = iter(range(n))
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            barrier.wait()
            while True:
                with lock:
                    i = next(jobs, None)
                if i is None:
                    return
                start = time.perf_counter()
                response = request(client, offset + i)
                elapsed = time.perf_counter() - start
                good = ok(response)
                with lock:
                    latencies.append(elapsed)
                    errors[0] += not good

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start, cpu = time.perf_counter(), cpu_s(pid)
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"qps": round(n / wall, 1), **stats_ms(latencies),
            "server_cpu_ms_per_query": round((cpu_s(pid) - cpu) / n * 1000, 2), "errors": errors[0]}


def run_server(root: Path, encoder: str, workdir: Path, args, queries: list[str],
               photos: list[tuple[str, bytes]] | None) -> dict:
    """Start a server process, time it to health, warm it, measure, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    code = SERVER.format(params=str(REPO / "params.yaml"), root=str(root), scenario=SCENARIO, encoder=encoder, port=port)
    logfile = workdir / "server.log"
    text, image = text_request(queries), image_request(photos) if photos else None
    with open(logfile, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                env=env)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{encoder} server exited {proc.returncode}:\n{logfile.read_text()[-3000:]}")
                try:
                    if client.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            report: dict = {"startup_s": round(time.perf_counter() - start, 2)}
            memory = {"started": memory_mb(proc.pid)["VmRSS"]}
            t = time.perf_counter()
            first = text(client, 0)
            if not ok(first):
                raise RuntimeError(f"{encoder}: first text query answered {first.status_code}: {first.text[:500]}")
            report["first_text_s"] = round(time.perf_counter() - t, 3)
            report["ready_s"] = round(report["startup_s"] + report["first_text_s"], 2)
            if image:
                t = time.perf_counter()
                first = image(client, 0)
                if not ok(first):
                    raise RuntimeError(f"{encoder}: first image query answered {first.status_code}: {first.text[:500]}")
                report["first_image_s"] = round(time.perf_counter() - t, 3)
            for i in range(10):  # warm-up: thread pool, allocator, page cache
                text(client, i)
                if image:
                    image(client, i)
        memory["warm"] = memory_mb(proc.pid)["VmRSS"]
        report["text"] = sequential(url, text, args.queries, proc.pid, 10)
        if image:
            report["image"] = sequential(url, image, args.queries, proc.pid, 10)
        n, offset = args.queries, 10 + args.queries
        report[f"text_{args.clients}"] = concurrent(url, text, n, args.clients, proc.pid, offset)
        if image:
            report[f"image_{args.clients}"] = concurrent(url, image, n, args.clients, proc.pid, offset)
        after = memory_mb(proc.pid)
        memory.update(after=after["VmRSS"], peak=after["VmHWM"])
        report["rss_mb"] = memory
        health = httpx.get(f"{url}/api/health", timeout=30).json()
        report["torch_imported"] = health["torch_imported"]
        report["products"] = health["scenarios"][SCENARIO]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log(f"{encoder} server on {root.name}: {json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)})}")
    return report


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def ratios(a: dict, b: dict, clients: int, kinds: list[str]) -> dict:
    """a / b for latencies, throughput, start-up and memory."""
    out = {"startup_s": ratio(a["startup_s"], b["startup_s"]), "ready_s": ratio(a["ready_s"], b["ready_s"]),
           "first_text_s": ratio(a["first_text_s"], b["first_text_s"])}
    for kind in kinds:
        for stat in ("p50_ms", "p99_ms"):
            out[f"{kind}_{stat}"] = ratio(a[kind][stat], b[kind][stat])
            out[f"{kind}_{clients}_{stat}"] = ratio(a[f"{kind}_{clients}"][stat], b[f"{kind}_{clients}"][stat])
        out[f"{kind}_{clients}_qps"] = ratio(a[f"{kind}_{clients}"]["qps"], b[f"{kind}_{clients}"]["qps"])
        out[f"{kind}_server_cpu_per_query"] = ratio(a[kind]["server_cpu_ms_per_query"], b[kind]["server_cpu_ms_per_query"])
    for stage in ("warm", "after", "peak"):
        out[f"rss_{stage}"] = ratio(a["rss_mb"][stage], b["rss_mb"][stage])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=200, help="requests per measurement (sequential and concurrent)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients for the queries/s figures")
    ap.add_argument("--large", type=int, default=1_000_000, help="synthetic products for the flat vs hnsw runs")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--batch-size", type=int, default=64, help="products embedded per forward pass (demo index)")
    args = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    catalog = pd.read_parquet(REPO / "data/clean/catalog.parquet", columns=["query", "image_path"])
    rng = np.random.default_rng(0)
    queries = [str(q) for q in rng.permutation(catalog["query"].dropna().unique()) if str(q).strip()]
    photos = [(Path(p).name, (REPO / "data/clean" / p).read_bytes())
              for p in rng.choice(catalog["image_path"].dropna().unique(), 64, replace=False)]
    report: dict = {"cpus": os.cpu_count(), "loadavg_1m_before": round(os.getloadavg()[0], 2), "queries": args.queries, "clients": args.clients, "k": K,
                    "text_queries_distinct": len(queries), "photos_distinct": len(photos),
                    "photo_bytes_mean": round(float(np.mean([len(d) for _, d in photos])))}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        tmp = Path(tmp)
        demo, report["prepare"] = prepare_demo(tmp, args.batch_size)
        modes = {encoder: run_server(demo, encoder, tmp / f"run-{encoder}", args, queries, photos)
                 for encoder in ("torch", "onnx")}
        report["demo"] = modes
        report["ratio_onnx_vs_torch"] = ratios(modes["onnx"], modes["torch"], args.clients, ["text", "image"])
        if not args.skip_large:
            roots, large = prepare_large(tmp, demo, args.large, ["flat", "hnsw"])
            for kind, root in roots.items():
                large[kind].update(run_server(root, "onnx", tmp / f"run-large-{kind}", args, queries, None))
            large["ratio_hnsw_vs_flat"] = ratios(large["hnsw"], large["flat"], args.clients, ["text"])
            report["large"] = large
    report["loadavg_1m_after"] = round(os.getloadavg()[0], 2)  # other work on the machine skews latencies
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
