"""Label encoders for the attribute heads, fitted on the training split and saved with the model.

A missing label (null in the catalog) encodes to -1 and is masked out of the loss: the model is
never taught to guess a value nobody gave. Classes rarer than `min_count` go to one "other"
class, so a head is not asked to learn a class from two examples; class weights (scikit-learn's
"balanced") keep frequent classes from drowning the rest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from catalog_search.io import write_json
from catalog_search.params import ParamsError, check_choice

MISSING = -1
OTHER = "other"
CLASS_WEIGHTS = ["balanced", "none"]


def known(value: object) -> bool:
    return isinstance(value, str) and value != ""


def check_heads(heads: dict[str, list[str]]) -> None:
    """Parents must be heads listed earlier: the heads run in the order given, parents first."""
    seen: list[str] = []
    for name, parents in heads.items():
        for parent in parents or []:
            if parent not in seen:
                raise ParamsError(f"params.yaml: attributes.heads.{name} conditions on {parent!r}, which is not a head "
                                  f"listed before it ({seen or 'none'}); list parents first")
        seen.append(name)


@dataclass
class AttributeLabels:
    """One attribute's classes (index = class id) and the mapping from catalog values."""

    name: str
    classes: list[str]
    counts: list[int]
    weights: list[float] = field(default_factory=list)

    @property
    def has_other(self) -> bool:
        return OTHER in self.classes

    def label(self, value: object) -> str | None:
        """The class name a catalog value trains and is scored as (rare and unseen -> other)."""
        if not known(value):
            return None
        return value if value in self.classes or not self.has_other else OTHER

    def encode(self, values: Sequence[object]) -> np.ndarray:
        """Class ids, MISSING where the value is unknown or a class the model does not have."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(self.label(v), MISSING) if known(v) else MISSING for v in values], np.int64)


class LabelSet:
    """Every head's labels plus the (parent, child) value pairs seen in training, which define
    hierarchy consistency: a predicted child is consistent when training saw it under the
    predicted parent."""

    def __init__(self, heads: dict[str, list[str]], labels: dict[str, AttributeLabels], pairs: dict[str, list[list[str]]]):
        self.heads, self.labels, self.pairs = heads, labels, pairs

    @classmethod
    def fit(cls, rows: Sequence[dict], heads: dict[str, list[str]], min_count: int, class_weights: str) -> "LabelSet":
        from sklearn.utils.class_weight import compute_class_weight  # here: ingest/clean validate params with this module

        check_heads(heads)
        check_choice("attributes.class_weights", class_weights, CLASS_WEIGHTS)
        labels = {}
        for name in heads:
            values = [r.get(name) for r in rows if known(r.get(name))]
            if not values:
                raise ValueError(f"attribute {name!r} has no labels in the training split; remove it from "
                                 "attributes.heads or add the column to the catalog")
            names, counts = np.unique(values, return_counts=True)
            common = [str(n) for n, c in zip(names, counts) if c >= min_count]
            rare = int(sum(c for c, n in zip(counts, names) if c < min_count))
            classes = common + ([OTHER] if rare and OTHER not in common else [])
            if len(classes) < 2:
                raise ValueError(f"attribute {name!r} has {len(classes)} class(es) in the training split "
                                 f"{dict(zip(names.tolist(), counts.tolist()))}; a head needs two (lower attributes.min_count)")
            enc = AttributeLabels(name, classes, [])
            y = enc.encode(values)
            enc.counts = np.bincount(y, minlength=len(classes)).tolist()
            enc.weights = (compute_class_weight("balanced", classes=np.arange(len(classes)), y=y).round(6).tolist()
                           if class_weights == "balanced" else [1.0] * len(classes))
            labels[name] = enc
        pairs = {}
        for child, parents in heads.items():
            for parent in parents or []:
                seen = {(labels[parent].label(r.get(parent)), labels[child].label(r.get(child))) for r in rows}
                pairs[f"{parent}>{child}"] = sorted([p, c] for p, c in seen if p and c)
        return cls(heads, labels, pairs)

    def targets(self, rows: Sequence[dict]) -> np.ndarray:
        """(n_rows, n_heads) class ids, MISSING where unknown."""
        return np.stack([self.labels[a].encode([r.get(a) for r in rows]) for a in self.heads], 1)

    def consistent(self, edge: str, parent: Sequence[str], child: Sequence[str]) -> np.ndarray:
        allowed = {tuple(p) for p in self.pairs[edge]}
        return np.array([(p, c) in allowed for p, c in zip(parent, child)])

    def save(self, path: Path) -> None:
        write_json(path, {"heads": self.heads, "pairs": self.pairs,
                          "labels": {a: {"classes": e.classes, "counts": e.counts, "weights": e.weights}
                                     for a, e in self.labels.items()}})

    @classmethod
    def load(cls, path: Path) -> "LabelSet":
        d = json.loads(Path(path).read_text())
        return cls(d["heads"], {a: AttributeLabels(a, **e) for a, e in d["labels"].items()}, d["pairs"])


def search_value(given: object, guess: str, confident: bool) -> dict:
    """One attribute of a prediction record (predict_attributes, extract_vlm): the value search
    uses is the catalog's where it has one (`source: catalog`), else a confident prediction
    (`source: predicted`), else none; "other" never fills a gap: it names no value."""
    given = given if known(given) else None
    fill = given is None and confident and guess != OTHER
    return {"value": given if given is not None else guess if fill else None,
            "source": "catalog" if given is not None else "predicted" if fill else None, "prediction": guess}
