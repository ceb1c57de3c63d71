"""Attribute classifier: a LoRA-tuned image backbone with hierarchical heads (category ->
subcategory -> article type, plus colour, pattern, ... as params list them).

(label sets and image backbones, which the VLM shares, live in core/labels.py and core/backbones.py)
model.py      the classifier, freezing/LoRA per mode, save and load
train.py      masked multi-head loss and the training loop
evaluate.py   accuracy, macro-F1, hierarchy consistency, and per-product predictions for search
"""

MODES = ["lora", "frozen", "full"]  # what trains besides the heads: LoRA, nothing, or the whole backbone
