"""Clean results scored against ground truth, where the source has it (the demo catalog's
`title_true` and `<attribute>_true` columns): the same numbers for every backend."""
from __future__ import annotations

from collections import Counter

from catalog_search.catalog import ATTRIBUTES


class CleanScore:
    """Exact title match and per-attribute agreement (case-insensitive; a null counts as a miss)."""

    def __init__(self) -> None:
        self.hits: Counter = Counter()
        self.seen: Counter = Counter()

    def add(self, row: dict) -> None:
        for name, truth_column in [("title", "title_true"), *((a, f"{a}_true") for a in ATTRIBUTES)]:
            truth = row.get(truth_column)
            if isinstance(truth, str):
                value = row.get(name)
                self.seen[name] += 1
                if name == "title":
                    self.hits[name] += value == truth
                else:
                    self.hits[name] += isinstance(value, str) and value.strip().lower() == truth.strip().lower()

    def metrics(self) -> dict:
        out = {}
        if self.seen["title"]:
            out["title_exact_match"] = round(self.hits["title"] / self.seen["title"], 4)
        agreement = {a: round(self.hits[a] / self.seen[a], 4) for a in ATTRIBUTES if self.seen[a]}
        if agreement:
            out["attribute_agreement"] = agreement
        return out
