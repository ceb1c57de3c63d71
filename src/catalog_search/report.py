"""Every scenario side by side: metrics with intervals, paired differences that say whether a gain
is beyond noise, cost, what each scenario was given; plus a recall@k figure and a top-5 gallery."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from catalog_search.evaluation import paired_difference
from catalog_search.io import atomic_path

KEY_METRICS = ["text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10", "image_to_text_R@1",
               "image_to_text_R@5", "image_to_text_R@10", "text_to_image_mrr",
               "title_to_image_R@1", "title_to_image_R@10", "title_to_image_mrr",
               "attribute_P@1", "attribute_P@10", "attribute_mrr",
               "sampled100_text_to_image_R@1", "sampled100_text_to_image_R@10",
               "sampled100_image_to_text_R@1", "sampled100_image_to_text_R@10"]
# compared query by query against each baseline (data/eval/<scenario>.npz)
COMPARED = ["title_to_image_R@10", "title_to_image_mrr", "text_to_image_R@10", "attribute_P@10",
            "sampled100_text_to_image_R@1", "sampled100_image_to_text_R@1"]
HEADLINE = "title_to_image_R@10"
BASELINES = ["zero_shot", "linear_probe"]
NOISE_P = 0.05
REFERENCES = ["chance", "zero_shot"]  # untrained rows


def beyond_noise(d: dict) -> bool:
    """A paired difference is beyond noise when p < NOISE_P and its 95% interval excludes 0."""
    return bool(d["p"] < NOISE_P and (d["ci95"][0] > 0 or d["ci95"][1] < 0))


def paired(a: np.ndarray, b: np.ndarray, n: int, seed: int) -> dict:
    """`paired_difference` with its verdict."""
    d = paired_difference(a, b, n, seed)
    return {**d, "beyond_noise": beyond_noise(d)}


def per_query(scores: dict[str, np.ndarray], metric: str) -> np.ndarray:
    """Each query's contribution to `metric` (its mean over queries is the metric)."""
    if metric.startswith("attribute_"):
        return scores[metric.replace("mrr", "rr")]
    key, stat = metric.rsplit("_", 1)
    r = scores[key]
    return 1.0 / r if stat == "mrr" else (r <= int(stat[2:])).astype(np.float64)


def compare(scenarios: list[str], scores_dir: Path, n: int, seed: int) -> dict:
    """Paired differences of every trained scenario against each baseline on the same queries."""
    scores = {s: dict(np.load(scores_dir / f"{s}.npz")) for s in scenarios}
    out = {}
    for base in BASELINES:
        for s in scenarios:
            if base not in scores or s == base or s in REFERENCES:
                continue
            out[f"{s} vs {base}"] = {m: paired(per_query(scores[s], m), per_query(scores[base], m), n, seed)
                                     for m in COMPARED}
    return out


def summarise(scenarios: list[str], eval_dir: Path, train_dir: Path, scores_dir: Path, counts: dict,
              n: int = 1000, seed: int = 0) -> dict:
    rows = {}
    for s in scenarios:
        ev = json.loads((eval_dir / f"{s}.json").read_text())
        tr = json.loads((train_dir / f"{s}.json").read_text())
        rows[s] = {**{k: ev[k] for k in KEY_METRICS if k in ev}, "ci95": {k: ev["ci95"][k] for k in KEY_METRICS if k in ev},
                   "trainable_params": tr["trainable_params"],
                   "trainable_fraction": round(tr["trainable_params"] / tr["base_params"], 6),
                   "train_seconds": tr["train_seconds"],
                   "given": {k: tr.get(k) for k in ("epochs_given", "lr", "steps", "best_step")}}
    return {"scenarios": rows, "comparisons": compare(scenarios, scores_dir, n, seed), "counts": counts}


def _metric(row: dict, key: str) -> str:
    if key not in row:
        return "–"
    lo, hi = row["ci95"][key]
    return f"{row[key]:.3f} ±{(hi - lo) / 2:.3f}"


def _short(m: str) -> str:
    return (m.replace("sampled100_text_to_image", "s100 t2i").replace("sampled100_image_to_text", "s100 i2t")
            .replace("title_to_image", "title→img").replace("text_to_image", "t2i").replace("image_to_text", "i2t")
            .replace("attribute_", "attr "))


def _diff_cell(d: dict) -> str:
    mark = "**" if d["beyond_noise"] else ""
    return f"{mark}{d['diff']:+.3f}{mark} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] p={d['p']:.3f}"


def reading(summary: dict) -> list[str]:
    """Plain sentences: which differences of the headline metric are beyond noise."""
    lines = []
    for pair, row in summary["comparisons"].items():
        d = row[HEADLINE]
        verdict = "beyond noise" if d["beyond_noise"] else "within noise"
        lines.append(f"- {pair}: {_short(HEADLINE)} {d['diff']:+.3f} ({verdict}; 95% interval "
                     f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], p={d['p']:.3f})")
    return lines


def markdown(summary: dict, header: str = "") -> str:
    """The scenario tables; ± is half the bootstrap 95% interval over the test queries."""
    shown = ["title_to_image_R@1", "title_to_image_R@10", "title_to_image_mrr", "text_to_image_R@10",
             "image_to_text_R@10", "attribute_P@1", "attribute_P@10", "sampled100_text_to_image_R@1",
             "sampled100_image_to_text_R@1"]
    lines = [header] if header else []
    c = summary["counts"]
    lines += [f"Products in: {c.get('products_in')}, kept: {c.get('products_kept')}; test images: "
              f"{c.get('test_images')}, title queries: {c.get('test_images')}, attribute queries: "
              f"{c.get('attribute_queries')}, sampled-100 queries: {c.get('sampled_queries')}.", ""]
    lines += ["| scenario | " + " | ".join(_short(m) for m in shown) + " | trainable params | train s | given |",
              "|---" * (len(shown) + 4) + "|"]
    for s, r in summary["scenarios"].items():
        g = r["given"]
        given = "–" if not g.get("steps") else f"{g['epochs_given']} ep, lr {g['lr']:g}, best step {g['best_step']}/{g['steps']}"
        lines.append(f"| {s} | " + " | ".join(_metric(r, m) for m in shown)
                     + f" | {r['trainable_params']:,} ({r['trainable_fraction']:.2%}) | {r['train_seconds']:.0f} | {given} |")
    lines += ["", "± is half the 95% bootstrap interval over test queries. `chance`: the towers before alignment "
              "(random projections); `zero_shot`: the aligned start untouched.", "",
              "Paired differences on the same test queries (95% paired-bootstrap interval, sign-flip p-value; "
              "**bold**: beyond noise, the interval excludes 0 and p < 0.05):", "",
              "| pair | " + " | ".join(_short(m) for m in COMPARED) + " |", "|---" * (len(COMPARED) + 1) + "|"]
    for pair, row in summary["comparisons"].items():
        lines.append(f"| {pair} | " + " | ".join(_diff_cell(row[m]) for m in COMPARED) + " |")
    return "\n".join(lines + ["", "Reading (headline: title → image R@10):", "", *reading(summary), ""])


def wise_ft_markdown(curves: dict[str, dict]) -> str:
    """WiSE-FT along alpha per scenario: in-domain and retention, each alpha paired with alpha 1."""
    keys = ["title_to_image_R@1", "title_to_image_R@10", "attribute_P@10", "generic_to_image_R@10"]
    lines = []
    for s, w in curves.items():
        lines += ["", f"## WiSE-FT: {s} interpolated with zero_shot (wise_ft@{s})", "",
                  "alpha 0 is zero_shot, 1 the tuned model; generic→img: the pretraining captioner's captions of the "
                  "test photos (retention of what zero-shot was made for). In brackets: the paired difference with "
                  f"alpha 1 (**bold**: beyond noise). Served as {s}-wise: alpha {w['served_alpha']}.", "",
                  "| alpha | " + " | ".join(_short(k) for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for point in w["curve"]:
            paired = w["vs_tuned"].get(str(point["alpha"]), {})
            cells = []
            for k in keys:
                d = paired.get(k)
                mark = d and beyond_noise(d)
                cells.append(f"{point[k]:.3f}" + (f" ({'**' if mark else ''}{d['diff']:+.3f}{'**' if mark else ''})" if d else ""))
            lines.append(f"| {point['alpha']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""]) if lines else ""


def plot_recall(scenarios: list[str], curve_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, direction in zip(axes, ["text_to_image", "image_to_text"]):
        for s in scenarios:
            rows = json.loads((curve_dir / f"{s}.json").read_text())
            ax.plot([r["k"] for r in rows], [r[direction] for r in rows], marker=".", label=s)
        ax.set(title=direction.replace("_", " "), xlabel="k", ylabel="recall@k")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def gallery_queries(subcategories: list, n: int, seed: int) -> list[int]:
    """A fixed set of test products whose titles are the gallery's queries: one per subcategory
    (the most common first), so the picture spans the catalog."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(subcategories):
        groups.setdefault(str(g), []).append(i)
    ordered = sorted(groups.values(), key=len, reverse=True)
    return [int(rng.choice(members)) for members in ordered[:n]]


def gallery(scenarios: list[str], emb_dir: Path, images: list[bytes], queries: list[int], out: Path,
            k: int = 5, thumb: int = 56) -> None:
    """One PNG: a row per query (its title), a column per scenario, each cell its top-k images by
    title -> image similarity; green frame = a product with the query's exact title (a positive)."""
    from PIL import Image, ImageDraw

    from catalog_search.shards import decode_image

    titles = None
    tops = {}
    for s in scenarios:
        img = np.load(emb_dir / s / "images.npy")
        tit = np.load(emb_dir / s / "titles.npy")
        tops[s] = np.argsort(-(tit[queries] @ img.T), axis=1, kind="stable")[:, :k]
        if titles is None:
            titles = pd.read_parquet(emb_dir / s / "items.parquet")["title"].fillna("").astype(str).tolist()
    pad, label_w, head_h = 4, 190, 22
    cell_w = k * (thumb + pad) + 2 * pad
    row_h = thumb + 2 * pad
    canvas = Image.new("RGB", (label_w + cell_w * len(scenarios), head_h + row_h * len(queries)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, s in enumerate(scenarios):
        draw.text((label_w + j * cell_w + pad, 6), s, fill="black")
    for r, q in enumerate(queries):
        y = head_h + r * row_h
        draw.text((pad, y + pad), "\n".join(textwrap.wrap(titles[q], 30)[:4]), fill="black")
        for j, s in enumerate(scenarios):
            for c, i in enumerate(tops[s][r]):
                x = label_w + j * cell_w + pad + c * (thumb + pad)
                picture = decode_image(images[int(i)])
                picture.thumbnail((thumb - 4, thumb - 4))
                frame = "#1a9850" if titles[int(i)] == titles[q] else "#dddddd"
                draw.rectangle([x, y + pad, x + thumb - 1, y + pad + thumb - 1], outline=frame, width=3)
                canvas.paste(picture, (x + (thumb - picture.width) // 2, y + pad + (thumb - picture.height) // 2))
        draw.line([(0, y), (canvas.width, y)], fill="#eeeeee")
    with atomic_path(out) as tmp:
        canvas.save(tmp, "PNG")
