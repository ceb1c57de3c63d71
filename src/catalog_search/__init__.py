"""catalog-search: fine-tune and compare search models on a product catalog, reproducibly."""

__version__ = "0.1.0"
