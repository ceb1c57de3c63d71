"""Attribute metrics (scikit-learn) and the per-product predictions that search filters use."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from catalog_search.core.labels import LabelSet, OTHER, known, search_value


def predicted_labels(labels: LabelSet, probs: dict[str, np.ndarray]) -> dict[str, list[str]]:
    return {a: [labels.labels[a].classes[i] for i in p.argmax(1)] for a, p in probs.items()}


def attribute_metrics(labels: LabelSet, rows: Sequence[dict], probs: dict[str, np.ndarray]) -> dict:
    """Accuracy and macro-F1 per attribute over the rows that have a label (scored in the model's
    classes: a rare value counts as "other"), and hierarchy consistency per parent>child edge:
    the share of rows whose predicted child was seen under the predicted parent in training."""
    pred = predicted_labels(labels, probs)
    per: dict[str, dict] = {}
    for a, enc in labels.labels.items():
        truth = [enc.label(r.get(a)) for r in rows]
        idx = [i for i, t in enumerate(truth) if t is not None]
        if not idx:
            continue
        y_true, y_pred = [truth[i] for i in idx], [pred[a][i] for i in idx]
        per[a] = {"accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
                  "macro_f1": round(float(f1_score(y_true, y_pred, average="macro", zero_division=0)), 4),
                  "n": len(idx), "classes": len(enc.classes)}
    consistency = {}
    for edge in labels.pairs:
        parent, child = edge.split(">")
        consistency[edge] = round(float(labels.consistent(edge, pred[parent], pred[child]).mean()), 4)
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None
    return {"mean_accuracy": mean([m["accuracy"] for m in per.values()]),
            "mean_macro_f1": mean([m["macro_f1"] for m in per.values()]),
            "hierarchy_consistency": mean(list(consistency.values())),
            "attributes": per, "consistency": consistency, "n_rows": len(rows)}


def confusion_rows(labels: LabelSet, rows: Sequence[dict], probs: dict[str, np.ndarray], attribute: str) -> list[dict]:
    """{actual, predicted} per labelled row: the input of `dvc plots`' confusion template."""
    enc = labels.labels[attribute]
    pred = predicted_labels(labels, {attribute: probs[attribute]})[attribute]
    return [{"actual": enc.label(r.get(attribute)), "predicted": p}
            for r, p in zip(rows, pred) if enc.label(r.get(attribute)) is not None]


def catalog_predictions(labels: LabelSet, rows: Sequence[dict], probs: dict[str, np.ndarray],
                        min_confidence: float) -> list[dict]:
    """One record per product: for each attribute the model's prediction, its confidence and the
    value search should use (`search_value`: a prediction fills a gap at `min_confidence`)."""
    out = []
    for i, row in enumerate(rows):
        attrs = {}
        for a, enc in labels.labels.items():
            k = int(probs[a][i].argmax())
            confidence = round(float(probs[a][i][k]), 4)
            attrs[a] = {**search_value(row.get(a), enc.classes[k], confidence >= min_confidence), "confidence": confidence}
        out.append({"product_id": row["product_id"], "attributes": attrs})
    return out


def prediction_summary(records: Sequence[dict], rows: Sequence[dict], min_confidence: float) -> dict:
    """Counts per attribute: given by the catalog, filled, left unknown; confident disagreements
    with the catalog (candidates for a metadata fix); and, where the catalog carries the hidden
    ground truth as `<attribute>_true` (the demo does), the accuracy of the filled values."""
    summary: dict[str, dict] = {}
    for a in records[0]["attributes"] if records else []:
        given = filled = unknown = disagree = right = scored = 0
        for rec, row in zip(records, rows):
            v = rec["attributes"][a]
            if v["source"] == "catalog":
                given += 1
                disagree += v["prediction"] not in (v["value"], OTHER) and v["confidence"] >= min_confidence
            elif v["source"] == "predicted":
                filled += 1
                if known(row.get(f"{a}_true")):
                    scored += 1
                    right += v["value"] == row[f"{a}_true"]
            else:
                unknown += 1
        summary[a] = {"catalog": given, "filled": filled, "unknown": unknown, "disagrees_with_catalog": disagree,
                      **({"filled_accuracy": round(right / scored, 4), "filled_scored": scored} if scored else {})}
    return {"products": len(records), "attributes": summary}
