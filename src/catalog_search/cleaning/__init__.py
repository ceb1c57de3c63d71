"""Cleaning backends. `rules` (rules.py) is offline: text rules (text.py), image checks run in
worker processes (images.py, kept free of heavy imports so workers start fast), duplicates
(dedupe.py). `openai_batch` (openai_batch/) runs the rules first, then asks a VLM through the
OpenAI Batch API for a clean title and the attributes the picture shows."""

BACKENDS = ["rules", "openai_batch"]
ACTIONS = ["reject", "group", "keep"]  # what dedupe does with a duplicate (clean.dedupe.exact / near)
