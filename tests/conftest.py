"""Shared fixtures: a small real demo catalog (from the packaged Fashion-MNIST) and tiny models."""
from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FMNIST = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_raw(tmp_path_factory):
    """(catalog path, DataFrame) of a 120-product demo catalog at 32 px."""
    from catalog_search import catalog
    from catalog_search.sources.demo import build_demo

    out = tmp_path_factory.mktemp("raw")
    df = catalog.conform(build_demo(FMNIST, out, n_products=120, image_size=32, seed=1, variant_prob=0.3,
                                    wrong_color_prob=0.05), "demo")
    catalog.save(df, out / "catalog.parquet")
    return out / "catalog.parquet", df


@pytest.fixture(scope="session")
def clean_params():
    from catalog_search.params import load_params

    return load_params(ROOT / "params.yaml")["clean"]


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory, demo_raw, clean_params):
    """Shards of the cleaned demo catalog (train/val/test/mini_train)."""
    from catalog_search import catalog
    from catalog_search.cleaning.rules import clean_catalog
    from catalog_search.shards import assign_splits, save_manifest, write_shards

    raw_path, _ = demo_raw
    out = tmp_path_factory.mktemp("clean")
    clean_catalog(raw_path, out, clean_params)
    kept = catalog.load(out / "catalog.parquet")
    kept["split"] = assign_splits(kept, 0.15, 0.15, "article_type", 0)
    kept["mini_train"] = kept["split"] == "train"
    shards = out / "shards"
    save_manifest(shards, write_shards(kept, out / "catalog.parquet", shards, 50))
    return shards, kept


def assert_frozen_unchanged(before: dict, after: dict, atol_mha: float = 1e-5) -> None:
    """Frozen tensors are bit-identical after training, with one documented exception.

    peft's nn.MultiheadAttention LoRA (open_clip transformer towers) merges the delta into the
    frozen weights before every forward and subtracts it after; (W + dW) - dW leaves float
    rounding behind. Every other LoRA layer type leaves its base weights untouched, bit for bit.
    """
    mha = [n for n in before if ".attn.base_layer." in n]
    changed = [n for n in before if n not in mha and not torch.equal(after[n], before[n])]
    assert not changed, f"frozen tensors changed: {changed[:5]}"
    for n in mha:
        torch.testing.assert_close(after[n], before[n], atol=atol_mha, rtol=0)


@contextmanager
def serving(app, header_timeout: float = 10):
    """Serve an ASGI app on a free 127.0.0.1 port in a thread, with the server `catalog-search serve`
    runs (uvicorn + a header deadline); yields its base URL."""
    from catalog_search.serving.http import server as make_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(app, "127.0.0.1", port, header_timeout, limit_concurrency=200)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
