"""The serving index on Qdrant (`serve.index.backend: qdrant`): the same products, vectors and
filters as the FAISS file, searched by a Qdrant collection instead. Local mode (`serve.qdrant.url:
null`: a folder beside the index, no server to start) for one machine; `url` for a Qdrant server
or cluster that many serving processes share (API key from QDRANT_API_KEY, never from params).

A point per product: id = uuid5(product_id), payload = the product id, its content key (the
vector's cache key) and its attributes in lower case (filters are case-insensitive, as FAISS's
are). `sync` upserts only points whose vector or payload changed and deletes products that left
the catalog, so a server-side collection follows the catalog incrementally.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from catalog_search.index import ProductIndex

NAMESPACE = uuid.UUID("6f0c5c2e-4d8e-4a55-9f43-3b0c6f1f9a10")
UPSERT_BATCH = 256


def point_id(product_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, str(product_id)))


def client_for(location: Path, url: str | None):
    from qdrant_client import QdrantClient

    if url:
        return QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
    return QdrantClient(path=str(location))


def payloads(items: pd.DataFrame, keys: list[str], attributes: list[str]) -> list[dict[str, Any]]:
    rows = items[["product_id", *attributes]].to_dict("records")
    return [{"product_id": str(r["product_id"]), "content": key,
             **{a: str(r[a]).lower() for a in attributes if isinstance(r[a], str)}} for r, key in zip(rows, keys)]


def sync(client, collection: str, vectors: np.ndarray, items: pd.DataFrame, keys: list[str],
         attributes: list[str]) -> dict[str, int]:
    """Make `collection` hold exactly these products: upsert new or changed points (vector key or
    payload), delete the rest. Returns how many points were upserted, deleted and left alone."""
    from qdrant_client import models

    if not client.collection_exists(collection):
        client.create_collection(collection, vectors_config=models.VectorParams(size=int(vectors.shape[1]),
                                                                                  distance=models.Distance.DOT))
    existing: dict[str, dict] = {}
    offset = None
    while True:
        points, offset = client.scroll(collection, limit=1024, offset=offset, with_payload=True, with_vectors=False)
        existing.update({str(p.id): p.payload for p in points})
        if offset is None:
            break
    wanted = payloads(items, keys, attributes)
    ids = [point_id(p["product_id"]) for p in wanted]
    changed = [i for i, (pid, payload) in enumerate(zip(ids, wanted)) if existing.get(pid) != payload]
    for start in range(0, len(changed), UPSERT_BATCH):
        rows = changed[start:start + UPSERT_BATCH]
        client.upsert(collection, points=[models.PointStruct(id=ids[i], vector=vectors[i].tolist(), payload=wanted[i])
                                          for i in rows])
    gone = sorted(set(existing) - set(ids))
    if gone:
        client.delete(collection, points_selector=models.PointIdsList(points=gone))
    return {"upserted": len(changed), "deleted": len(gone), "unchanged": len(ids) - len(changed)}


class QdrantIndex(ProductIndex):
    """A serving folder (items, vectors) whose searches run on its Qdrant collection."""

    def __init__(self, folder: Path, url: str | None = None, collection: str | None = None,
                 build_hint: str | None = None):
        super().__init__(folder, build_hint)
        self.collection = collection or self.info.get("qdrant_collection") or Path(folder).name
        self.client = client_for(Path(folder) / "qdrant", url)

    def query(self, vectors: np.ndarray, k: int, where: dict[str, str] | None = None) -> list[list[dict]]:
        """Ranked products per query vector, exact search, attribute filters as Qdrant filters."""
        from qdrant_client import models

        self.check_filters(where or {})
        condition = models.Filter(must=[models.FieldCondition(key=c, match=models.MatchValue(value=v.lower()))
                                        for c, v in (where or {}).items()]) if where else None
        requests = [models.QueryRequest(query=np.asarray(v, np.float32).tolist(), limit=k, filter=condition,
                                        with_payload=["product_id"], params=models.SearchParams(exact=True))
                    for v in vectors]
        answers = self.client.query_batch_points(self.collection, requests=requests)
        return [[{"rank": r + 1, "product_id": p.payload["product_id"],
                  "title": str(self.items.at[self.row[p.payload["product_id"]], "title"]), "score": round(float(p.score), 4)}
                 for r, p in enumerate(answer.points)] for answer in answers]
