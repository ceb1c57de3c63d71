"""One table over all scenarios: metrics, relative gains, cost; plus a recall@k figure."""
from __future__ import annotations

import json
from pathlib import Path

KEY_METRICS = ["text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10",
               "image_to_text_R@1", "image_to_text_R@5", "image_to_text_R@10", "text_to_image_mrr"]
GAIN_METRICS = ["text_to_image_R@10", "image_to_text_R@10"]
BASELINES = ["zero_shot", "linear_probe"]
UNALIGNED_NOTE = (
    "The default model's towers (MiniLM text, EfficientNet-Lite0 image) are pretrained separately and "
    "start unaligned, with randomly initialised projections: its zero_shot row is the chance floor, "
    "not a pretrained CLIP's zero-shot. With real CLIP/SigLIP weights (model.name/model.pretrained) "
    "zero_shot is a real baseline."
)


def _gain(value: float, base: float | None) -> float | None:
    return None if base in (None, 0) else round((value - base) / base, 4)


def summarise(scenarios: list[str], eval_dir: Path, train_dir: Path) -> dict:
    rows = {}
    for s in scenarios:
        ev = json.loads((eval_dir / f"{s}.json").read_text())
        tr = json.loads((train_dir / f"{s}.json").read_text())
        rows[s] = {**{k: ev[k] for k in KEY_METRICS}, "ci95": {k: ev["ci95"][k] for k in KEY_METRICS},
                   "trainable_params": tr["trainable_params"],
                   "trainable_fraction": round(tr["trainable_params"] / tr["base_params"], 6),
                   "train_seconds": tr["train_seconds"]}
    for s, row in rows.items():
        for base in BASELINES:
            for metric in GAIN_METRICS:
                if base in rows and base != s:
                    row[f"gain_vs_{base}_{metric}"] = _gain(row[metric], rows[base][metric])
    return {"scenarios": rows, "note": UNALIGNED_NOTE}


def _metric(row: dict, key: str) -> str:
    lo, hi = row["ci95"][key]
    return f"{row[key]:.3f} ±{(hi - lo) / 2:.3f}"


def _gain_cell(g: float | None) -> str:
    return "–" if g is None else f"{g:+.1%}"


def markdown(summary: dict, header: str = "") -> str:
    """The scenario table; ± is half the bootstrap 95% interval over the test queries."""
    metrics = ["text_to_image_R@1", "text_to_image_R@10", "image_to_text_R@1", "image_to_text_R@10", "text_to_image_mrr"]
    names = [m.replace("text_to_image", "t2i").replace("image_to_text", "i2t") for m in metrics]
    lines = [header] if header else []
    lines += ["| scenario | " + " | ".join(names) + " | trainable params | train s | t2i R@10 vs zero_shot "
              "| t2i R@10 vs linear_probe |", "|---" * (len(metrics) + 5) + "|"]
    for s, r in summary["scenarios"].items():
        lines.append(f"| {s} | " + " | ".join(_metric(r, m) for m in metrics)
                     + f" | {r['trainable_params']:,} ({r['trainable_fraction']:.2%}) | {r['train_seconds']:.0f} | "
                     + " | ".join(_gain_cell(r.get(f"gain_vs_{b}_text_to_image_R@10")) for b in BASELINES) + " |")
    return "\n".join(lines + ["", "± is half the 95% bootstrap interval over test queries.", "",
                               f"> {summary['note']}", ""])


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
