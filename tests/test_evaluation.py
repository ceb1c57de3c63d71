import numpy as np
import pytest

from catalog_search.evaluation import Positives, caption_positives, ranks, recall_curve, retrieval_metrics


def test_caption_positives_share_identical_texts():
    texts, i2t, t2i = caption_positives([["Red Dress", "a red dress"], ["Red Dress"], ["Blue Coat"]])
    assert texts == ["Red Dress", "a red dress", "Blue Coat"]
    assert t2i.indices[t2i.indptr[0]:t2i.indptr[1]].tolist() == [0, 1]  # "Red Dress" -> both dresses


def test_rank_is_the_best_positive():
    queries = np.eye(3, dtype=np.float32)
    docs = np.array([[0.1, 0, 0], [0.9, 0, 0], [0.5, 0, 0], [0, 0, 1]], np.float32)
    pos = Positives.from_lists([[0, 2], [3], [3]])
    # query 0: doc1 (0.9) > doc2 (0.5, positive) -> rank 2; query 1: all zero, ties in its favour -> 1
    assert ranks(queries, docs, pos).tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="no positive"):
        Positives.from_lists([[0], []])


def test_metrics_perfect_and_random():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    texts, i2t, t2i = caption_positives([[f"t{i}"] for i in range(50)])
    perfect, r = retrieval_metrics(emb, emb, i2t, t2i)
    assert perfect["text_to_image_R@1"] == perfect["image_to_text_R@1"] == 1.0
    assert perfect["text_to_image_mean_rank"] == 1.0 and perfect["image_to_text_mrr"] == 1.0
    assert set(perfect) == {f"{d}_{m}" for d in ("image_to_text", "text_to_image")
                            for m in ("R@1", "R@5", "R@10", "mean_rank", "median_rank", "mrr")}
    shuffled, _ = retrieval_metrics(emb, emb[rng.permutation(50)], i2t, t2i)
    assert shuffled["text_to_image_R@1"] < 0.2
    curve = recall_curve(r, 5)
    assert [row["k"] for row in curve] == [1, 2, 3, 4, 5] and curve[0]["text_to_image"] == 1.0
