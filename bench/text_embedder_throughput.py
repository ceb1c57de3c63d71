"""Embedding throughput of the tuned text embedder (LoRA merged into the weights) vs the base model.

    python bench/text_embedder_throughput.py      (after `dvc repro train_text`)

Both models encode the same descriptions, alternating, in one process (this machine is noisy:
compare the ratio, not the absolute numbers). Prints JSON.
"""
import json
import time
from pathlib import Path

from peft import PeftModel

from catalog_search.config import load_config
from catalog_search.core.data import load_split
from catalog_search.text_embedder import load_model


def texts_per_second(model, texts: list[str]) -> float:
    start = time.perf_counter()
    model.encode(texts, batch_size=128)
    return len(texts) / (time.perf_counter() - start)


if __name__ == "__main__":
    p = load_config().text_embedder.model_dump()
    texts = [s["description"] for s in load_split(Path("data/shards"), "test")]
    base = load_model(p["base"], max_length=p["max_length"])
    tuned = load_model(p["base"], max_length=p["max_length"])
    merged = PeftModel.from_pretrained(tuned[0].auto_model, "models/text_embedder").merge_and_unload()
    tuned[0].auto_model = merged
    texts_per_second(base, texts[:64]), texts_per_second(tuned, texts[:64])  # warm-up
    runs = {"base": [], "tuned_merged": []}
    for _ in range(3):
        runs["base"].append(texts_per_second(base, texts))
        runs["tuned_merged"].append(texts_per_second(tuned, texts))
    best = {k: round(max(v), 1) for k, v in runs.items()}
    print(json.dumps({"texts": len(texts), "texts_per_s": best, "ratio_tuned_over_base": round(best["tuned_merged"] / best["base"], 3),
                      "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()}}, indent=1))
