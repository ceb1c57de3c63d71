"""Extraction: decoding under the template (the default: only the values are decoded, always
valid) or free greedy generation, validated against the schema, an invalid answer decoded again
under the template and counted as repaired (the honest measure of what the model writes alone)."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from catalog_search.core.labels import LabelSet, OTHER, known, search_value
from catalog_search.vlm.decode import decode_constrained
from catalog_search.vlm.model import AttributeVLM, quantized
from catalog_search.vlm.template import JsonTemplate
from catalog_search.vlm.train import image_inputs


@torch.no_grad()
def extract(model: AttributeVLM, template: JsonTemplate, tokenizer, inputs: torch.Tensor, batch_size: int,
            device: torch.device, free: bool = False) -> tuple[list[dict[str, str]], list[bool]]:
    """(answers, which were repaired) for every row of `inputs`; nothing is repaired unless `free`."""
    model.to(device).eval()
    answers, repaired = [], []
    for k in tqdm(range(0, len(inputs), batch_size), desc="vlm extract", unit="batch"):
        batch = inputs[k:k + batch_size].to(device)
        if not free:
            answers += decode_constrained(model, template, batch)
            repaired += [False] * len(batch)
            continue
        parsed = [template.parse(text)[0] for text in model.generate_text(batch, tokenizer, template.max_tokens + 4)]
        invalid = [i for i, answer in enumerate(parsed) if answer is None]
        fixed = iter(decode_constrained(model, template, batch[invalid]) if invalid else [])
        answers += [answer if answer is not None else next(fixed) for answer in parsed]
        repaired += [answer is None for answer in parsed]
    return answers, repaired


def extract_images(settings: dict, model: AttributeVLM, template: JsonTemplate, tokenizer, images: Sequence[bytes],
                   batch_size: int, device: torch.device, free: bool = False, quantize: str | None = None
                   ) -> tuple[list[dict[str, str]], list[bool], float]:
    """`extract` from encoded images: (answers, repaired, images/s from the bytes to the answer,
    the frozen backbone's features included). Constrained decoding runs the `quantize`d copy,
    free generation the float model (see `quantized`)."""
    model = model if free else quantized(model, quantize)
    start = time.perf_counter()
    inputs = image_inputs(settings, images, batch_size, device)
    answers, repaired = extract(model, template, tokenizer, inputs, batch_size, device, free)
    return answers, repaired, len(images) / max(time.perf_counter() - start, 1e-9)


def vlm_metrics(labels: LabelSet, rows: Sequence[dict], answers: list[dict], repaired: list[bool] | None = None) -> dict:
    """Per-attribute exact-match accuracy over rows with a known value; with `repaired` (free
    generation), validity before repair too."""
    out: dict = {"n_rows": len(rows)}
    if repaired is not None:
        out.update(valid_json_raw=round(1 - float(np.mean(repaired)), 4), repaired=int(sum(repaired)))
    out["accuracy"] = {}
    for a, enc in labels.labels.items():
        pairs = [(enc.label(r.get(a)), ans[a]) for r, ans in zip(rows, answers) if known(r.get(a))]
        out["accuracy"][a] = round(float(np.mean([t == p for t, p in pairs])), 4) if pairs else None
    scored = [v for v in out["accuracy"].values() if v is not None]
    out["mean_accuracy"] = round(float(np.mean(scored)), 4) if scored else None
    return out


def needs_extraction(rows: Sequence[dict], attributes: Sequence[str]) -> list[int]:
    """Indices of the rows missing at least one of `attributes`: where an answer can fill a gap."""
    return [i for i, row in enumerate(rows) if not all(known(row.get(a)) for a in attributes)]


def catalog_records(rows: Sequence[dict], answers: list[dict], repaired: list[bool]) -> list[dict]:
    """The attribute classifier's record shape (predict_attributes), so search can fill from either:
    the catalog's value where it has one, else the VLM's ("other" fills nothing). A greedy answer
    has no calibrated confidence: `confidence` is null, `repaired` says how it was decoded."""
    return [{"product_id": row["product_id"],
             "attributes": {a: {**search_value(row.get(a), guess, True), "confidence": None, "repaired": fixed}
                            for a, guess in answer.items()}}
            for row, answer, fixed in zip(rows, answers, repaired)]
