"""The arena (mounted at /arena by `catalog-search serve --arena A B`): a query, two scenarios' top
results as rows A and B in random order, a vote. Which scenario is which row stays on the server
until the stats page.

Queries: a test-set caption or a catalog image (their embeddings are on disk: no model needed),
or text the person types (each scenario's encoder loads once). Voters get a signed session
cookie with their first round; a vote counts only from the session its round was shown to, and
sessions per client address and votes per session are rate-limited, so one client cannot flip
the standings with a burst of votes.
"""
from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from catalog_search.arena.store import AlreadyVoted, UnknownRound, VoteStore, WrongSession
from catalog_search.config import ArenaParams
from catalog_search.search import ScenarioSearch
from catalog_search.serving.http import RateLimit, strict_json, validation_errors

STATIC = Path(__file__).parent
COOKIE = "arena_session"


class Vote(BaseModel):
    model_config = ConfigDict(extra="forbid")
    round_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    choice: Literal["A", "B", "tie", "skip"]


class Arena:
    """The two scenarios (their evaluation-split indexes) and the caption pool, shared by all requests."""

    def __init__(self, a: str, b: str, root: Path, k: int, seed: int | None = None, encoder: str = "torch"):
        if a == b:
            raise ValueError(f"--arena {a} {b}: compare two different scenarios")
        self.names, self.k = (a, b), k
        folder = {s: Path(root) / "data/embeddings" / s for s in self.names}
        self.engines = {s: ScenarioSearch(s, root, folder=folder[s], encoder=encoder) for s in self.names}
        items = [e.index.items["product_id"].tolist() for e in self.engines.values()]
        if items[0] != items[1]:
            raise ValueError(f"{a} and {b} embedded different catalogs; re-run `dvc repro embed` for both")
        self.captions = pd.read_parquet(folder[a] / "texts.parquet")["text"].tolist()
        self.caption_vectors = {s: np.load(folder[s] / "texts.npy", mmap_mode="r") for s in self.names}
        self.rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()

    @staticmethod
    def _result(hits: list[dict]) -> list[dict]:
        return [{"product_id": h["product_id"], "title": h["title"], "image_url": f"/images/{h['product_id']}"}
                for h in hits]

    def make_round(self, store: VoteStore, kind: str, text: str | None, session: str, ttl_minutes: float) -> dict:
        first = self.engines[self.names[0]].index
        with self._rng_lock:
            swap = bool(self.rng.random() < 0.5)
            pick = int(self.rng.integers(len(self.captions) if kind == "caption" else len(first.items)))
        hits, query = {}, {"kind": kind}
        if kind == "caption":
            query["text"] = self.captions[pick]
            for s, e in self.engines.items():
                hits[s] = e.index.query(np.asarray(self.caption_vectors[s][pick: pick + 1]), self.k)[0]
        elif kind == "image":
            pid = str(first.items.at[pick, "product_id"])
            query.update(product_id=pid, image_url=f"/images/{pid}")
            for s, e in self.engines.items():
                hits[s] = e.similar(pid, self.k)  # the query product itself is not a result
        else:
            query["text"] = text
            for s, e in self.engines.items():
                hits[s] = e.search_text(text, self.k)
        model_a, model_b = self.names[::-1] if swap else self.names
        round_id = secrets.token_urlsafe(12)
        store.add_round(round_id, kind, query.get("text") or query.get("product_id"), model_a, model_b,
                        {"A": [h["product_id"] for h in hits[model_a]], "B": [h["product_id"] for h in hits[model_b]]},
                        session, ttl_minutes)
        return {"round_id": round_id, "query": query, "rows": {"A": self._result(hits[model_a]),
                                                              "B": self._result(hits[model_b])}}


class Sessions:
    """Voter sessions: a random id signed with the store's secret (a client cannot mint its own)."""

    def __init__(self, secret: bytes, per_minute: int):
        self.secret, self.new_per_address = secret, RateLimit(per_minute)

    def _sign(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()[:32]

    def of(self, request: Request) -> str | None:
        session, _, signature = (request.cookies.get(COOKIE) or "").partition(".")
        return session if session and hmac.compare_digest(signature, self._sign(session)) else None

    def start(self, request: Request, response: Response) -> str:
        """A new session for this client address (429 past sessions_per_minute), set as a cookie."""
        address = request.client.host if request.client else "unknown"
        if not self.new_per_address.hit(address):
            raise HTTPException(429, "too many new voter sessions from this address; wait a minute")
        session = secrets.token_urlsafe(16)
        response.set_cookie(COOKIE, f"{session}.{self._sign(session)}", httponly=True, samesite="strict",
                            path="/arena", max_age=7 * 24 * 3600)
        return session


def arena_router(arena: Arena, store: VoteStore, cfg: ArenaParams, max_query_chars: int) -> APIRouter:
    router = APIRouter(prefix="/arena")
    sessions, votes = Sessions(store.secret(), cfg.sessions_per_minute), RateLimit(cfg.votes_per_minute)

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "page.html", media_type="text/html")

    @router.get("/arena.js", include_in_schema=False)
    def script() -> FileResponse:
        return FileResponse(STATIC / "arena.js", media_type="text/javascript")

    @router.get("/api/round")
    def new_round(request: Request, response: Response, kind: Literal["caption", "image", "text"] = "caption",
                  q: str | None = None) -> dict:
        """A new round for this voter (a session cookie is set with the first one)."""
        if kind == "text" and not (q and q.strip() and len(q) <= max_query_chars):
            raise HTTPException(422, f"a typed query needs q: 1 to {max_query_chars} characters")
        session = sessions.of(request) or sessions.start(request, response)
        return arena.make_round(store, kind, q.strip() if q else None, session, cfg.round_ttl_minutes)

    @router.post("/api/vote")
    async def vote(request: Request) -> dict:
        """Body {"round_id": ..., "choice": "A" | "B" | "tie" | "skip"}, from the round's own session."""
        try:
            v = Vote.model_validate(strict_json(await request.body()))
        except ValidationError as e:
            return validation_errors(e.errors())
        session = sessions.of(request)
        if session is None:
            raise HTTPException(403, "no voter session: load a round first (GET /arena/api/round)")
        if not votes.hit(session):
            raise HTTPException(429, f"over {cfg.votes_per_minute} votes a minute; slow down")
        try:
            store.vote(v.round_id, v.choice, session)
        except UnknownRound:
            raise HTTPException(404, f"no round {v.round_id!r} (or it expired): ask /arena/api/round for one")
        except WrongSession:
            raise HTTPException(403, f"round {v.round_id!r} was shown to another voter session")
        except AlreadyVoted:
            raise HTTPException(409, f"round {v.round_id!r} already has a vote")
        return {"ok": True, "votes": store.count()}

    @router.get("/api/stats")
    def stats() -> dict:
        return store.stats()

    @router.get("/stats", response_class=HTMLResponse, include_in_schema=False)
    def stats_page() -> str:
        return render_stats(store.stats())

    return router


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
            "</table><p><a href='./'>back to voting</a></p>")
