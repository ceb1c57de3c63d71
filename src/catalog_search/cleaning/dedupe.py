"""Duplicate images: identical bytes (SHA-256) and near-identical pictures (per-channel pHash within
`max_distance` bits), found incrementally as rows stream through clean, first occurrence wins.

A duplicate is either rejected (pointing at the product it repeats) or grouped: kept, with its
group_id merged into the first one's so the two can never land in different splits (a copy in
test of a train image inflates every metric). Near neighbours come from FAISS's multi-index
hashing: with max_distance + 1 hash tables over disjoint bit ranges, any two codes within
max_distance bits agree exactly on at least one range (pigeonhole), so the search is exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

HASH_BITS = 192


@dataclass
class Duplicate:
    kind: str  # "exact" | "near"
    action: str  # what clean.dedupe says to do with this kind
    first: int  # position of the first occurrence among the added images
    of: str  # its product_id


@dataclass
class Deduplicator:
    exact: str
    near: str
    max_distance: int
    _by_sha: dict[bytes, int] = field(default_factory=dict)
    _ids: list[str] = field(default_factory=list)
    _groups: list[str] = field(default_factory=list)
    _parent: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tables = self.max_distance + 1
        self._index = faiss.IndexBinaryMultiHash(HASH_BITS, tables, min(HASH_BITS // tables, 64))

    def check(self, sha256: bytes, phash: bytes) -> Duplicate | None:
        """Is this image a duplicate of one already added? (Exact first, then near.)"""
        if self.exact != "keep" and sha256 in self._by_sha:
            first = self._by_sha[sha256]
            return Duplicate("exact", self.exact, first, self._ids[first])
        if self.near != "keep" and self._index.ntotal:
            lims, _, ids = self._index.range_search(np.frombuffer(phash, np.uint8)[None], self.max_distance + 1)
            if lims[1] > 0:
                first = int(ids[lims[0]:lims[1]].min())
                return Duplicate("near", self.near, first, self._ids[first])
        return None

    def add(self, product_id: str, group_id: str, sha256: bytes, phash: bytes) -> None:
        """Record a kept image."""
        self._by_sha.setdefault(sha256, len(self._ids))
        self._ids.append(product_id)
        self._groups.append(group_id)
        self._index.add(np.frombuffer(phash, np.uint8)[None])

    def merge(self, group_id: str, duplicate: Duplicate) -> None:
        """Join `group_id` with the group of the duplicate's first occurrence."""
        a, b = self.find(group_id), self.find(self._groups[duplicate.first])
        if a != b:
            self._parent[max(a, b)] = min(a, b)  # the smaller id wins: the result does not depend on order

    def find(self, group_id: str) -> str:
        """The merged group of `group_id` (itself when never merged)."""
        root = group_id
        while root in self._parent:
            root = self._parent[root]
        while group_id != root:  # path compression
            self._parent[group_id], group_id = root, self._parent[group_id]
        return root

    @property
    def merged(self) -> bool:
        return bool(self._parent)
