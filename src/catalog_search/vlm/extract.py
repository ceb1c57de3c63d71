"""Extraction: free greedy generation, validated against the schema; an invalid answer is
decoded again under the template (always valid), and counted as repaired."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from catalog_search.attributes.labels import OTHER, LabelSet, known
from catalog_search.vlm.model import AttributeVLM
from catalog_search.vlm.template import JsonTemplate


@torch.no_grad()
def extract(model: AttributeVLM, template: JsonTemplate, tokenizer, features: torch.Tensor, batch_size: int,
            device: torch.device) -> tuple[list[dict[str, str]], list[bool], float]:
    """(answers, which were repaired, images/s) for every feature row."""
    model.to(device).eval()
    answers, repaired = [], []
    start = time.perf_counter()
    for k in tqdm(range(0, len(features), batch_size), desc="vlm extract", unit="batch"):
        batch = features[k:k + batch_size].to(device)
        for i, text in enumerate(model.generate_text(batch, tokenizer, template.max_tokens + 4)):
            answer, _ = template.parse(text)
            repaired.append(answer is None)
            answers.append(answer or template.decode_constrained(model.lm, model.prefix(batch[i:i + 1])))
    return answers, repaired, len(features) / max(time.perf_counter() - start, 1e-9)


def vlm_metrics(labels: LabelSet, rows: Sequence[dict], answers: list[dict], repaired: list[bool]) -> dict:
    """Validity before repair, and per-attribute exact-match accuracy over rows with a known value."""
    out = {"n_rows": len(rows), "valid_json_raw": round(1 - float(np.mean(repaired)), 4),
           "valid_json_after_repair": 1.0, "repaired": int(sum(repaired)), "accuracy": {}}
    for a, enc in labels.labels.items():
        pairs = [(enc.label(r.get(a)), ans[a]) for r, ans in zip(rows, answers) if known(r.get(a))]
        out["accuracy"][a] = round(float(np.mean([t == p for t, p in pairs])), 4) if pairs else None
    scored = [v for v in out["accuracy"].values() if v is not None]
    out["mean_accuracy"] = round(float(np.mean(scored)), 4) if scored else None
    return out


def catalog_records(rows: Sequence[dict], answers: list[dict], repaired: list[bool]) -> list[dict]:
    """The attribute classifier's record shape (predict_attributes), so search can fill from either:
    the catalog's value where it has one, else the VLM's ("other" fills nothing). A greedy answer
    has no calibrated confidence: `confidence` is null, `repaired` says how it was decoded."""
    out = []
    for row, answer, fixed in zip(rows, answers, repaired):
        attrs = {}
        for a, guess in answer.items():
            given = row.get(a) if known(row.get(a)) else None
            fill = given is None and guess != OTHER
            attrs[a] = {"value": given if given is not None else guess if fill else None,
                        "source": "catalog" if given is not None else "predicted" if fill else None,
                        "prediction": guess, "confidence": None, "repaired": fixed}
        out.append({"product_id": row["product_id"], "attributes": attrs})
    return out
