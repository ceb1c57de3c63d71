"""Retrieval metrics with several positives per query, named as in open_clip's logs.

A query is a hit at k when any of its positives is in the top k: an image has several
captions, and one caption ("Red Dress") may describe several products. numpy only, so the
evaluate stage starts without torch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

KS = (1, 5, 10)
# what early stopping may watch: higher is better
SCORES = [f"{d}_{m}" for d in ("text_to_image", "image_to_text") for m in (*(f"R@{k}" for k in KS), "mrr")]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product is cosine similarity."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class Positives:
    """Sparse query -> positive-document lists (CSR), both directions from one caption table."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray):
        self.indptr, self.indices = indptr, indices

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> "Positives":
        lengths = np.array([len(x) for x in lists])
        if (lengths == 0).any():
            raise ValueError(f"query {int(np.argmin(lengths))} has no positive")
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        return cls(indptr, np.concatenate([np.asarray(x, np.int64) for x in lists]))


def caption_positives(captions: Sequence[Sequence[str]]) -> tuple[list[str], Positives, Positives]:
    """Unique texts, image -> text positives and text -> image positives."""
    texts: dict[str, int] = {}
    image_to_text = [[texts.setdefault(t, len(texts)) for t in dict.fromkeys(caps)] for caps in captions]
    text_to_image: list[list[int]] = [[] for _ in texts]
    for i, ids in enumerate(image_to_text):
        for t in ids:
            text_to_image[t].append(i)
    return list(texts), Positives.from_lists(image_to_text), Positives.from_lists(text_to_image)


def ranks(queries: np.ndarray, docs: np.ndarray, positives: Positives, chunk: int = 2048) -> np.ndarray:
    """1-based rank of each query's best-ranked positive (ties count in the query's favour)."""
    out = np.empty(len(queries), np.int64)
    for s in range(0, len(queries), chunk):
        e = min(s + chunk, len(queries))
        sims = queries[s:e] @ docs.T
        lo, hi = positives.indptr[s], positives.indptr[e]
        rows = np.repeat(np.arange(e - s), np.diff(positives.indptr[s:e + 1]))
        best = np.full(e - s, -np.inf, sims.dtype)
        np.maximum.at(best, rows, sims[rows, positives.indices[lo:hi]])
        out[s:e] = 1 + (sims > best[:, None]).sum(1)
    return out


def rank_metrics(r: np.ndarray, prefix: str, ks: Sequence[int] = KS) -> dict[str, float]:
    m = {f"{prefix}_R@{k}": float(np.mean(r <= k)) for k in ks}
    m[f"{prefix}_mean_rank"] = float(r.mean())
    m[f"{prefix}_median_rank"] = float(np.floor(np.median(r)))
    m[f"{prefix}_mrr"] = float(np.mean(1.0 / r))
    return m


def retrieval_metrics(image_emb: np.ndarray, text_emb: np.ndarray, i2t: Positives, t2i: Positives,
                      ks: Sequence[int] = KS) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """open_clip-named metrics for both directions, plus the raw ranks (for recall@k curves)."""
    r = {"image_to_text": ranks(image_emb, text_emb, i2t), "text_to_image": ranks(text_emb, image_emb, t2i)}
    metrics: dict[str, float] = {}
    for prefix, rk in r.items():
        metrics.update(rank_metrics(rk, prefix, ks))
    return {k: round(v, 4) for k, v in metrics.items()}, r


def bootstrap_ci(r: dict[str, np.ndarray], ks: Sequence[int] = KS, n: int = 1000,
                 seed: int = 0) -> dict[str, list[float]]:
    """95% intervals of R@k and MRR from resampling the queries: how far a difference between
    two scenarios has to be before it is more than the luck of this test split."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, rk in r.items():
        sample = rk[rng.integers(0, len(rk), (n, len(rk)))]
        stats = {**{f"R@{k}": (sample <= k).mean(1) for k in ks}, "mrr": (1.0 / sample).mean(1)}
        for name, values in stats.items():
            out[f"{prefix}_{name}"] = [round(float(v), 4) for v in np.percentile(values, [2.5, 97.5])]
    return out


def recall_curve(r: dict[str, np.ndarray], max_k: int) -> list[dict[str, float]]:
    """Rows of recall@k for k = 1..max_k, one column per direction (a `dvc plots` table)."""
    return [{"k": k, **{d: round(float(np.mean(rk <= k)), 4) for d, rk in r.items()}} for k in range(1, max_k + 1)]


# --- Protocols that compare with published numbers (README: "Results on a real catalog") ---

def title_positives(titles: Sequence[str]) -> Positives:
    """Title -> image (Marqo's KAGL text-to-image task): product i's title is query i; every
    product with an identical title is a positive."""
    by_title: dict[str, list[int]] = {}
    for i, t in enumerate(titles):
        by_title.setdefault(t, []).append(i)
    return Positives.from_lists([by_title[t] for t in titles])


def attribute_queries(items: Sequence[dict], attributes: Sequence[str]) -> tuple[list[tuple[str, str]], Positives]:
    """Attribute -> product (Marqo's category-to-product tasks): each value of each attribute,
    as its own text, is a query; the products with that value are relevant. Values the catalog
    does not know (null, "NA") are not queries."""
    queries, relevant = [], []
    for attribute in attributes:
        values: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            v = item.get(attribute)
            if v is not None and str(v).strip() and str(v) not in ("NA", "nan"):
                values.setdefault(str(v), []).append(i)
        for value in sorted(values):
            queries.append((attribute, value))
            relevant.append(values[value])
    return queries, Positives.from_lists(relevant) if relevant else Positives(np.zeros(1, np.int64), np.zeros(0, np.int64))


def precision_at(queries: np.ndarray, docs: np.ndarray, relevant: Positives, ks: Sequence[int] = (1, 10)) -> dict[str, np.ndarray]:
    """Per query: precision@k (share of the top k that is relevant) and reciprocal rank of the
    first relevant document."""
    top = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :max(ks)]
    out = {}
    for k in ks:
        hits = [np.isin(top[q, :k], relevant.indices[relevant.indptr[q]:relevant.indptr[q + 1]]).mean()
                for q in range(len(queries))]
        out[f"P@{k}"] = np.asarray(hits, np.float64)
    out["rr"] = 1.0 / ranks(queries, docs, relevant)
    return out


def sampled_ranks(texts: np.ndarray, images: np.ndarray, groups: Sequence, titles: Sequence[str],
                  n_queries: int = 1000, n_negatives: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Fashion-Gen's sampled protocol: for each of `n_queries` products, its title against its
    image and `n_negatives` others of the same group (subcategory), topped up from other groups
    when the group is smaller; rank of the true pair among the 1 + n_negatives, both directions.
    A product with the query's own title is never a negative (it would be a correct answer)."""
    rng = np.random.default_rng(seed)
    n = len(titles)
    groups = np.asarray([str(g) for g in groups])
    titles_arr = np.asarray(titles, dtype=object)
    chosen = np.sort(rng.choice(n, min(n_queries, n), replace=False))
    t2i, i2t = [], []
    for i in chosen:
        other = titles_arr != titles_arr[i]
        same = np.flatnonzero(other & (groups == groups[i]))
        neg = rng.choice(same, min(n_negatives, len(same)), replace=False)
        if len(neg) < n_negatives:
            rest = np.flatnonzero(other & (groups != groups[i]))
            neg = np.concatenate([neg, rng.choice(rest, min(n_negatives - len(neg), len(rest)), replace=False)])
        t_scores = images[neg] @ texts[i]
        i_scores = texts[neg] @ images[i]
        t2i.append(1 + int((t_scores > images[i] @ texts[i]).sum()))
        i2t.append(1 + int((i_scores > texts[i] @ images[i]).sum()))
    return {"sampled100_text_to_image": np.asarray(t2i), "sampled100_image_to_text": np.asarray(i2t)}


def mean_ci(values: np.ndarray, n: int = 1000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the mean of per-query values."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(1)
    return [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])]


def paired_difference(a: np.ndarray, b: np.ndarray, n: int = 1000, seed: int = 0) -> dict[str, float | list[float]]:
    """a - b on the same queries: the mean difference, its 95% paired-bootstrap interval, and a
    two-sided sign-flip permutation p-value (no difference: each query's sign is a coin flip)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    flips = (rng.integers(0, 2, (n, len(d))) * 2 - 1) @ d / len(d)
    p = (1 + int((np.abs(flips) >= abs(d.mean()) - 1e-12).sum())) / (n + 1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": round(float(d.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "p": round(p, 4)}
