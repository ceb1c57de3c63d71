"""The arena web app (FastAPI): a query, two scenarios' top results as rows A and B in random
order, a vote. Which scenario is which row stays on the server until the stats page.

Queries: a test-set caption or a catalog image (their embeddings are on disk: no model needed),
or text the person types (loads both models once). Images are served by product id from the
clean catalog; no path ever comes from the client.
"""
from __future__ import annotations

import html
import secrets
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from catalog_search import catalog
from catalog_search.arena.store import AlreadyVoted, UnknownRound, VoteStore
from catalog_search.search import ScenarioSearch

PAGE = Path(__file__).with_name("page.html")
MAX_BODY = 16 * 1024


class Vote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    round_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    choice: Literal["A", "B", "tie", "skip"]


class _BodyLimit:
    """Pure ASGI middleware: a request body over `limit` bytes gets 413 before it is read whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await JSONResponse({"detail": "request body too large"}, 413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, "request body too large")
            return message

        return await self.app(scope, limited, send)


class Arena:
    """The two scenarios, their query pools and the image table, shared by all requests."""

    def __init__(self, a: str, b: str, root: Path, k: int, seed: int | None = None):
        if a == b:
            raise ValueError(f"--a and --b are both {a!r}: compare two different scenarios")
        self.names, self.k = (a, b), k
        self.engines = {s: ScenarioSearch(s, root) for s in self.names}
        items = [e.index.items["product_id"].tolist() for e in self.engines.values()]
        if items[0] != items[1]:
            raise ValueError(f"{a} and {b} embedded different catalogs; re-run `dvc repro embed` for both")
        folder = {s: Path(root) / "data/embeddings" / s for s in self.names}
        self.captions = pd.read_parquet(folder[a] / "texts.parquet")["text"].tolist()
        self.caption_vectors = {s: np.load(folder[s] / "texts.npy", mmap_mode="r") for s in self.names}
        clean = catalog.load(Path(root) / "data/clean/catalog.parquet").set_index("product_id")["image_path"]
        base = Path(root) / "data/clean/catalog.parquet"
        self.images = {pid: catalog.resolve_image(base, clean[pid]) for pid in items[0] if pid in clean.index}
        self.rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()

    def _result(self, hits: list[dict]) -> list[dict]:
        return [{"product_id": h["product_id"], "title": h["title"], "image_url": f"/images/{h['product_id']}"}
                for h in hits]

    def make_round(self, store: VoteStore, kind: str, text: str | None) -> dict:
        with self._rng_lock:
            swap = bool(self.rng.random() < 0.5)
            pick = int(self.rng.integers(len(self.captions) if kind == "caption" else len(self.images)))
        hits, query = {}, {"kind": kind}
        if kind == "caption":
            query["text"] = self.captions[pick]
            for s, e in self.engines.items():
                hits[s] = e.index.query(np.asarray(self.caption_vectors[s][pick: pick + 1]), self.k)[0]
        elif kind == "image":
            pid = str(self.engines[self.names[0]].index.items.at[pick, "product_id"])
            query.update(product_id=pid, image_url=f"/images/{pid}")
            for s, e in self.engines.items():  # the query product itself is not a result
                found = e.index.query(np.asarray(e.index.images[pick: pick + 1]), self.k + 1)[0]
                hits[s] = [h for h in found if h["product_id"] != pid][: self.k]
        else:
            query["text"] = text
            for s, e in self.engines.items():
                hits[s] = e.search_text(text, self.k)
        model_a, model_b = self.names[::-1] if swap else self.names
        round_id = secrets.token_urlsafe(12)
        store.add_round(round_id, kind, query.get("text") or query.get("product_id"), model_a, model_b,
                        {"A": [h["product_id"] for h in hits[model_a]], "B": [h["product_id"] for h in hits[model_b]]})
        return {"round_id": round_id, "query": query, "rows": {"A": self._result(hits[model_a]),
                                                              "B": self._result(hits[model_b])}}


def create_app(a: str, b: str, db: Path, root: Path = Path("."), k: int = 8, seed: int | None = None) -> FastAPI:
    arena, store = Arena(a, b, root, k, seed), VoteStore(db)
    app = FastAPI(title="catalog-search arena", docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit, limit=MAX_BODY)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # log, answer, keep serving
        print(f"arena: {request.method} {request.url.path}: {type(exc).__name__}: {exc}", flush=True)
        return JSONResponse({"detail": "internal error"}, 500)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/round")
    def new_round(kind: Literal["caption", "image", "text"] = "caption", q: str | None = None) -> dict:
        if kind == "text" and not (q and q.strip() and len(q) <= 200):
            raise HTTPException(422, "a typed query needs q: 1 to 200 characters")
        return arena.make_round(store, kind, q.strip() if q else None)

    @app.post("/api/vote")
    def vote(v: Vote) -> dict:
        try:
            store.vote(v.round_id, v.choice)
        except UnknownRound:
            raise HTTPException(404, f"no round {v.round_id!r}: ask /api/round for one")
        except AlreadyVoted:
            raise HTTPException(409, f"round {v.round_id!r} already has a vote")
        return {"ok": True, "votes": store.count()}

    @app.get("/api/stats")
    def stats() -> dict:
        return store.stats()

    @app.get("/stats", response_class=HTMLResponse)
    def stats_page() -> str:
        return render_stats(store.stats())

    @app.get("/images/{product_id}")
    def image(product_id: str) -> FileResponse:
        path = arena.images.get(product_id)  # a lookup, never a path built from the request
        if path is None or not path.is_file():
            raise HTTPException(404, "no such product image")
        return FileResponse(path)

    app.state.store = store
    return app


def render_stats(stats: dict) -> str:
    """The stats page: per pair, each scenario's win rate with its 95% Wilson interval."""
    rows = []
    for pair in stats["pairs"].values():
        for name in pair["models"]:
            m = pair[name]
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{m['wins']}</td><td>{m['win_rate']:.1%}</td>"
                        f"<td>{m['ci95'][0]:.1%} - {m['ci95'][1]:.1%}</td></tr>")
        rows.append(f"<tr><td><i>tie</i></td><td>{pair['ties']}</td><td>{pair['tie_rate']:.1%}</td><td></td></tr>"
                    f"<tr><td><i>skipped</i></td><td>{pair['skips']}</td><td></td><td></td></tr>")
    return ("<!doctype html><meta charset='utf-8'><title>arena stats</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:1.5rem}td,th{padding:.3rem .8rem;text-align:left}</style>"
            f"<h1>Arena: {stats['votes']} votes</h1><table id='stats'><tr><th>scenario</th><th>wins</th>"
            "<th>win rate (of decided)</th><th>95% Wilson interval</th></tr>" + "".join(rows) +
            "</table><p><a href='/'>back to voting</a></p>")


def serve(a: str, b: str, db: Path, host: str = "127.0.0.1", port: int = 8000, k: int = 8) -> None:
    import uvicorn

    app = create_app(a, b, db, k=k)
    print(f"arena: {a} vs {b} on http://{host}:{port}/ (votes in {db}); Ctrl-C to stop", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
