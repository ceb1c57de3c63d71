"""Attribute classifier: a LoRA-tuned image backbone with hierarchical heads (category ->
subcategory -> article type, plus colour, pattern, ... as params list them).

labels.py     label encoders fitted on the training split, "other" bucket and class weights
backbone.py   packaged EfficientNet-Lite0, a Hugging Face ViT, or a trained CLIP image tower
model.py      the classifier, freezing/LoRA per mode, save and load
train.py      masked multi-head loss and the training loop
evaluate.py   accuracy, macro-F1, hierarchy consistency, and per-product predictions for search
"""

# the attributes a catalog row may carry (catalog.py's columns); here, free of pandas, for params checks
ATTRIBUTES = [
    "category", "subcategory", "article_type", "color", "pattern",
    "material", "style", "gender", "usage", "season",
]
MODES = ["lora", "frozen", "full"]  # what trains besides the heads: LoRA, nothing, or the whole backbone
