"""FAISS indexes: exact by default, approximate on request; filters keep k results when k exist."""
import numpy as np
import pandas as pd
import pytest

from catalog_search.evaluation import normalise
from catalog_search.index import IndexMismatch, ProductIndex, build_index, save_embeddings, search


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return normalise(rng.normal(size=(5000, 32))), normalise(rng.normal(size=(20, 32)))


def brute_force(vectors, queries, k, allowed=None):
    rows = np.arange(len(vectors)) if allowed is None else allowed
    scores = queries @ vectors[rows].T
    return rows[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_filtered_search_returns_k_when_k_pass(data, kind):
    vectors, queries = data
    index = build_index(vectors, kind, nlist=64, nprobe=4)
    for n_allowed in (3, 15, 400):  # fewer than k, a few more than k, many
        allowed = np.sort(np.random.default_rng(n_allowed).choice(len(vectors), n_allowed, replace=False))
        scores, ids = search(index, queries, 10, allowed, vectors)
        want = min(10, n_allowed)
        assert (ids[:, :want] >= 0).all() and (ids[:, want:] == -1).all()
        assert np.isin(ids[:, :want], allowed).all()
        if kind == "flat" or n_allowed <= 15:  # exact, or the exact fallback over a small subset
            np.testing.assert_array_equal(ids[:, :want], brute_force(vectors, queries, want, allowed))


def test_exact_index_is_exact_and_approximate_is_close(data):
    vectors, queries = data
    truth = brute_force(vectors, queries, 10)
    np.testing.assert_array_equal(search(build_index(vectors, "flat"), queries, 10)[1], truth)
    for kind in ("hnsw", "ivf"):
        _, ids = search(build_index(vectors, kind, nlist=64, nprobe=32), queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
        assert recall > 0.8, (kind, recall)


def test_product_index_checks_dimensions_and_attributes(tmp_path, data):
    vectors, queries = data
    items = pd.DataFrame({"product_id": [f"p{i}" for i in range(100)], "title": "t", "captions": [["c"]] * 100,
                          "color": ["red", "Blue"] * 50})
    save_embeddings(tmp_path, vectors[:100], vectors[:5], items, pd.DataFrame({"text": ["c"] * 5}), {"scenario": "s"})
    index = ProductIndex(tmp_path)
    hits = index.query(queries[:1], 7, {"color": "blue"})[0]
    assert len(hits) == 7 and all(int(h["product_id"][1:]) % 2 == 1 for h in hits)
    with pytest.raises(IndexMismatch, match="16 dims.*holds 32"):
        index.query(queries[:1, :16], 5)
    with pytest.raises(ValueError, match="no attribute 'colour'"):
        index.query(queries[:1], 5, {"colour": "red"})
