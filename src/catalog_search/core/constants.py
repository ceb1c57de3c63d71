"""Names that params.yaml chooses from and that several modules check: here, importing nothing,
so that validating params.yaml stays cheap (no pandas, no torch)."""

# the attributes a catalog row may carry (catalog.py's columns)
ATTRIBUTES = [
    "category", "subcategory", "article_type", "color", "pattern",
    "material", "style", "gender", "usage", "season",
]
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]  # auto: bf16 on CUDA and on CPUs with native bf16, else fp32
