"""Scaling out on engines people already run, each for real on this machine: an S3 server
(moto's server mode on 127.0.0.1) as DVC remote and shard store, Ray Data in local mode for the
serving index's embeddings, Qdrant in local mode as the serving index's search."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from catalog_search import catalog
from catalog_search.index import ProductIndex
from catalog_search.serving import encoders
from catalog_search.serving.catalog_index import build_image_index
from catalog_search.serving.qdrant_index import QdrantIndex
from test_pipeline import default_params, project, run, stages_run
from test_serving import clean_copy, tiny_merged

SECRET = "s3cr3t-NOT-A-REAL-KEY-1234567890"


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API on a free loopback port (moto's server), a bucket, and credentials in the environment only."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing-id", "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="catalog")
    yield endpoint
    server.stop()


def test_dvc_remote_round_trip_and_training_from_s3_shards(s3, tmp_path):
    params = default_params()
    params["data"]["demo"].update(n_products=60, image_size=32)
    params["shard"].update(mini_train_size=16, samples_per_shard=20)
    root = project(tmp_path / "a", params)
    run(["dvc", "repro", "shard"], root)
    log = [run(["dvc", "remote", "add", "-d", "store", "s3://catalog/dvc"], root),
           run(["dvc", "remote", "modify", "store", "endpointurl", s3], root)]
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "shards"], root)
    log.append(run(["dvc", "push"], root))
    clone = tmp_path / "b"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    log.append(run(["dvc", "pull", "--with-deps", "shard"], clone))  # what was built: ingest, clean, shard
    assert (clone / "data/shards/manifest.json").read_text() == (root / "data/shards/manifest.json").read_text()
    again = run(["dvc", "repro", "shard"], clone)  # everything pulled: nothing to run but the always-run hashing
    assert stages_run(again.stdout) == {"image_hashes"}, again.stdout
    assert "Data and pipelines are up to date" in run(["dvc", "status", "shard"], clone).stdout

    pushed = run([sys.executable, "-c", "from catalog_search.cli import main; main()", "push-shards",
                  "s3://catalog/shards"], root)  # then shard.read_from: s3://catalog/shards
    log.append(pushed)
    import train_run

    local, remote = (train_run.run(where, train_run.config(epochs=1)) for where in (root / "data/shards",
                                                                                      "s3://catalog/shards"))
    assert local[0]["steps"] == remote[0]["steps"] > 0
    assert local[1].keys() == remote[1].keys() and all(torch.equal(local[1][k], remote[1][k]) for k in local[1])
    for path in [root / "dvc.lock", root / "params.yaml", *root.joinpath(".dvc").rglob("config*"),
                 *root.rglob("metrics/*.json")]:
        assert SECRET not in path.read_text()
    assert not [c for c in log if SECRET in c.stdout + c.stderr]


@pytest.fixture(scope="module")
def demo_model(demo_shards, tmp_path_factory):
    shards, kept = demo_shards
    root = tmp_path_factory.mktemp("scale")
    return root, clean_copy(kept, shards.parent / "images", root), tiny_merged(root / "models/dual_lora")


def test_ray_data_embeds_like_the_local_engine(demo_model):
    from catalog_search.serving.ray_engine import ray_encoder

    root, clean, merged = demo_model
    encoder = encoders.load_encoder("torch", merged)
    local = build_image_index(clean, None, encoder, root / "local", root / "local-cache", 32, {})
    on_ray = build_image_index(clean, None, encoder, root / "ray", root / "ray-cache", 32, {},
                               ray_encode=ray_encoder("torch", merged, 32, 2, None))
    import ray

    ray.shutdown()
    assert local["embedded"] == on_ray["embedded"] == len(catalog.load(clean))
    a, b = ProductIndex(root / "local"), ProductIndex(root / "ray")
    assert np.abs(np.asarray(a.images) - np.asarray(b.images)).max() <= 1e-5
    assert a.items["product_id"].tolist() == b.items["product_id"].tolist()
    queries = np.asarray(a.images[:50])
    assert [[h["product_id"] for h in q] for q in a.query(queries, 10)] == \
        [[h["product_id"] for h in q] for q in b.query(queries, 10)]


def same_ranking(a: list[list[dict]], b: list[list[dict]], tol: float = 2e-4) -> bool:
    """The same score at every rank, and the same products except where scores tie (within `tol`:
    scores are rounded to 4 decimals, and two engines may order a tie either way)."""
    for qa, qb in zip(a, b, strict=True):
        if len(qa) != len(qb) or any(abs(x["score"] - y["score"]) > tol for x, y in zip(qa, qb)):
            return False
        scores = {h["product_id"]: h["score"] for h in qa + qb}
        for x, y in zip(qa, qb):
            if x["product_id"] != y["product_id"] and abs(scores[x["product_id"]] - scores[y["product_id"]]) > tol:
                return False
    return True


def test_qdrant_returns_what_faiss_exact_returns_and_follows_the_catalog(demo_model, tmp_path):
    root, clean, merged = demo_model
    encoder = encoders.load_encoder("torch", merged)
    counts = build_image_index(clean, None, encoder, tmp_path / "index", root / "local-cache", 32, {},
                               qdrant={"url": None, "collection": "dual_lora"})
    assert counts["qdrant"] == {"upserted": 120, "deleted": 0, "unchanged": 0}
    faiss_index, qdrant_index = ProductIndex(tmp_path / "index"), QdrantIndex(tmp_path / "index")
    rng = np.random.default_rng(0)
    queries = np.concatenate([np.asarray(faiss_index.images), encoder.encode_text([f"red item {i}" for i in range(80)])])
    queries = queries[rng.permutation(len(queries))[:200]]
    assert same_ranking(qdrant_index.query(queries, 10), faiss_index.query(queries, 10))
    color = faiss_index.items["color"].value_counts().index[1]
    for where in ({"color": color.upper()}, {"color": color, "category": "apparel"}):
        expected = faiss_index.query(queries, 10, where)
        assert any(expected) and same_ranking(qdrant_index.query(queries, 10, where), expected)
    qdrant_index.client.close()
    rows = catalog.load(clean)  # the catalog moves on: 3 leave, 2 change colour
    rows.loc[rows.index[3:5], "color"] = "Teal"
    catalog.save(rows.drop(index=rows.index[:3]), clean)
    try:
        again = build_image_index(clean, None, encoder, tmp_path / "index", root / "local-cache", 32, {},
                                  qdrant={"url": None, "collection": "dual_lora"})
    finally:
        catalog.save(rows, clean)
    assert again["qdrant"] == {"upserted": 2, "deleted": 3, "unchanged": 115}
    teal = QdrantIndex(tmp_path / "index").query(queries[:1], 10, {"color": "teal"})[0]
    assert sorted(h["product_id"] for h in teal) == sorted(rows["product_id"].iloc[3:5])
