"""The evaluation protocols and the paired comparison, on vectors whose answers are known."""
import numpy as np
import pytest

from catalog_search.evaluation import (attribute_queries, paired_difference, precision_at, ranks, sampled_ranks,
                                       title_positives)
from catalog_search.params import ParamsError
from catalog_search.training.pretrain import build_corpus, caption_texts, check_templates


def unit(rows):
    x = np.asarray(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_title_to_image_counts_every_identical_title_as_a_positive():
    titles = ["Red Dress", "Blue Shirt", "Red Dress"]
    pos = title_positives(titles)
    assert [list(pos.indices[pos.indptr[i]:pos.indptr[i + 1]]) for i in range(3)] == [[0, 2], [1], [0, 2]]
    images = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    queries = unit([[0, 0.1, 1], [0, 1, 0], [1, 0, 0]])  # query 0 finds image 2: the other "Red Dress"
    assert ranks(queries, images, pos).tolist() == [1, 1, 1]


def test_attribute_queries_skip_unknown_values_and_score_precision():
    items = [{"color": "Red", "gender": "Men"}, {"color": "Red", "gender": None}, {"color": "Blue", "gender": "NA"}]
    queries, relevant = attribute_queries(items, ["color", "gender"])
    assert queries == [("color", "Blue"), ("color", "Red"), ("gender", "Men")]
    images = unit([[1, 0], [0.9, 0.1], [0, 1]])
    scores = precision_at(unit([[0, 1], [1, 0], [1, 0.05]]), images, relevant, ks=(1, 2))
    assert scores["P@1"].tolist() == [1.0, 1.0, 1.0]
    assert scores["P@2"].tolist() == [0.5, 1.0, 0.5]
    assert scores["rr"].tolist() == [1.0, 1.0, 1.0]


def test_sampled_protocol_never_uses_a_same_title_product_as_negative_and_tops_up():
    rng = np.random.default_rng(0)
    n = 60
    titles = [f"t{i % 30}" for i in range(n)]            # every title twice
    groups = ["small"] * 5 + ["big"] * (n - 5)
    texts = unit(rng.normal(size=(n, 8)))
    images = texts.copy()                              # each product's own image is its closest
    out = sampled_ranks(texts, images, groups, titles, n_queries=20, n_negatives=40, seed=0)
    assert out["sampled100_text_to_image"].tolist() == [1] * 20
    # the twin (same title, same vector would tie) must never be drawn: make twins identical and check rank 1
    twins = unit(rng.normal(size=(30, 8)))[[i % 30 for i in range(n)]]
    out = sampled_ranks(twins, twins, groups, titles, n_queries=60, n_negatives=40, seed=1)
    assert (out["sampled100_image_to_text"] == 1).all() and len(out["sampled100_image_to_text"]) == 60


def test_paired_difference_tells_noise_from_a_real_gain():
    rng = np.random.default_rng(0)
    a = (rng.random(500) < 0.5).astype(float)
    same = paired_difference(a, a)
    assert same["diff"] == 0 and same["p"] == 1.0
    better = np.maximum(a, (rng.random(500) < 0.3))
    d = paired_difference(better, a)
    assert d["diff"] > 0.1 and d["ci95"][0] > 0 and d["p"] < 0.01
    shuffled = a.copy()  # 15 queries won and 12 lost: a small net gain that is noise
    shuffled[np.flatnonzero(a == 0)[:15]], shuffled[np.flatnonzero(a == 1)[:12]] = 1, 0
    noise = paired_difference(shuffled, a)
    assert noise["diff"] == 0.006 and noise["ci95"][0] < 0 < noise["ci95"][1] and noise["p"] > 0.05


def test_pretraining_templates_name_only_generic_words_never_an_evaluation_template():
    evaluation = ["{gender} {article_type} in {color}", "{color} {subcategory}"]
    check_templates(["a {color} {label}", "{label}, {color}"], evaluation)
    with pytest.raises(ParamsError, match="shape of a caption template"):
        check_templates(["{color} {label}"], evaluation)        # the shape of "{color} {subcategory}"
    with pytest.raises(ParamsError, match="may name only"):
        check_templates(["a {color} {article_type}"], evaluation)  # a catalog attribute
    assert caption_texts("jersey", "red", ["a {color} {label}", "a {color} {label}"]) == ["a red jersey"]


def test_pretraining_corpus_holds_out_part_of_what_it_is_given():
    from catalog_search.models.captioner import Caption

    samples = [{"key": f"k{i}", "product_id": str(i), "image": b"x"} for i in range(20)]
    train, val = build_corpus(samples, [Caption("jersey", "red")] * 20, ["a {color} {label}"], 0.25, 0)
    assert len(val) == 5 and len(train) == 15
    assert {r["key"] for r in train} | {r["key"] for r in val} == {s["key"] for s in samples}
    assert all(r["captions"] == ["a red jersey"] for r in train + val)
