"""The corpus of the aligned start: train-split photos with generic captions, nothing else.

Real users start from a CLIP whose towers were aligned on web image-text pairs. The offline
default's towers (MiniLM, EfficientNet-Lite0) were pretrained apart and are not aligned, so the
`pretrain` stage aligns them first, on pairs that keep zero_shot honest:

- images: the catalog's train split only, never a val or test photo (the stage reads the train
  shards alone and writes the corpus it used beside the checkpoint, which a test checks);
- texts: what `GenericCaptioner` says of the photo alone (an ImageNet class name and a basic
  colour term) through `pretrain.templates`, never the catalog's titles, attributes or the
  caption templates evaluation uses (`check_templates`).
"""
from __future__ import annotations

import re
import string
from typing import Sequence

import numpy as np

from catalog_search.params import ParamsError

FIELDS = {"label", "color"}  # what a pretraining template may name: the captioner's words only


def template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_templates(templates: Sequence[str], evaluation_templates: Sequence[str]) -> None:
    """Pretraining captions name only the captioner's words, in no template evaluation uses."""
    if not templates:
        raise ParamsError("params.yaml: pretrain.templates is empty; give at least one, e.g. 'a {color} {label}'")
    for t in templates:
        unknown = template_fields(t) - FIELDS
        if unknown or not template_fields(t):
            raise ParamsError(f"params.yaml: pretrain.templates entry {t!r} may name only {sorted(FIELDS)} "
                              f"(the generic captioner's words){f'; it names {sorted(unknown)}' if unknown else ''}")
        if _shape(t) in {_shape(e) for e in evaluation_templates}:
            raise ParamsError(f"params.yaml: pretrain.templates entry {t!r} has the shape of a caption template "
                              "that evaluation uses (clean.captions.templates); pretraining must not see it")


def _shape(template: str) -> str:
    """A template with its field names erased: '{color} {label}' and '{color} {subcategory}' match."""
    return re.sub(r"\{[^}]*\}", "{}", template.strip().lower())


def caption_texts(label: str, color: str, templates: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(t.format(label=label, color=color) for t in templates))


def build_corpus(samples: Sequence[dict], captions: Sequence, templates: Sequence[str], val_fraction: float,
                 seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val) pretraining samples; val is a held-out part of the train split, for early
    stopping without touching the catalog's own val split."""
    rows = [{"key": s["key"], "product_id": s.get("product_id"), "image": s["image"],
             "captions": caption_texts(c.label, c.color, templates)} for s, c in zip(samples, captions)]
    order = np.random.default_rng(seed).permutation(len(rows))
    n_val = max(1, int(round(val_fraction * len(rows))))
    return [rows[i] for i in sorted(order[n_val:])], [rows[i] for i in sorted(order[:n_val])]
