"""Cleaning backends. `rules` (rules.py) is offline: text rules (text.py), image checks run in
worker processes (images.py, kept free of heavy imports so workers start fast), duplicates
(dedupe.py)."""

BACKENDS = ["rules"]
