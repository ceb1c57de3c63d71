"""`catalog-search serve`: one FastAPI app for the shop and for people comparing scenarios.

    GET  /                         the search page (query box, photo drop, filter chips, result grid)
    GET  /api/search?q=&k=&scenario=&filter=color:Red     text query
    POST /api/search/image?k=&scenario=&filter=...        multipart `image`: a query photo
    GET  /api/similar/{product_id}?k=&scenario=&filter=   more like this (no encoder needed)
    GET  /api/products/{product_id}, /api/facets, /api/health
    GET  /images/{product_id}      a product's photo (looked up by id, never a path from the request)
    GET  /openapi.json             the API's schema
    /arena/...                     the blind A/B arena, with `--arena A B`

Every search runs on a scenario's serving index (every clean product); query encoders load once
per process. Bad input is a 4xx naming what to change; an unexpected error is logged as its type
and route only (never the sender's text) and answered 500, and the server keeps serving.
"""
from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image, UnidentifiedImageError

from catalog_search import catalog
from catalog_search.config import ServeParams
from catalog_search.index import IndexMismatch
from catalog_search.search import ScenarioSearch
from catalog_search.serving.http import Guard, LOOPBACK, validation_errors

STATIC = Path(__file__).parent / "static"
PAGES = {"search.js": "text/javascript", "search.css": "text/css"}
JSON_LIMIT = 64 * 1024


def load_engines(root: Path, cfg: ServeParams) -> dict[str, ScenarioSearch]:
    """Each serve.scenarios scenario whose serving index exists (its folder is data/serving/<s>)."""
    return {s: ScenarioSearch(s, root, encoder=cfg.encoder, qdrant_url=cfg.qdrant.url) for s in cfg.scenarios
            if (Path(root) / "data/serving" / s / "image.faiss").exists()}


def create_app(root: Path, cfg: ServeParams, arena: tuple[str, str] | None = None,
               votes: Path = Path("arena/votes.sqlite"), seed: int | None = None) -> FastAPI:
    root = Path(root)
    engines = load_engines(root, cfg)
    if not engines and arena is None:
        raise FileNotFoundError(f"no serving index for {cfg.scenarios} under {root}/data/serving: run "
                                "`dvc repro serve_index` (or `make run`) first")
    clean = root / "data/clean/catalog.parquet"
    images = catalog.load(clean).set_index("product_id")["image_path"]
    app = FastAPI(title="catalog-search", version="1", docs_url=None, redoc_url=None,
                  description="Search a product catalog with the scenario you trained.")
    hosts = [*LOOPBACK, *cfg.allowed_hosts, *([cfg.host] if cfg.host not in ("0.0.0.0", "::") else [])]
    app.add_middleware(Guard, limits={"/api/search/image": int(cfg.max_upload_mb * 1024 * 1024)},
                       default_limit=JSON_LIMIT, timeout=cfg.read_timeout_seconds, hosts=hosts)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_errors(exc.errors())

    @app.exception_handler(IndexMismatch)
    @app.exception_handler(FileNotFoundError)
    async def not_ready(request: Request, exc: Exception) -> JSONResponse:  # a missing or stale model: say which
        return JSONResponse({"detail": str(exc)}, 503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # log, answer, keep serving
        print(f"serve: {request.method} {request.url.path}: {type(exc).__name__}", file=sys.stderr, flush=True)
        return JSONResponse({"detail": "internal error"}, 500)

    def engine(scenario: str | None) -> ScenarioSearch:
        name = scenario or next(iter(engines), None)
        if name not in engines:
            raise HTTPException(404, f"no serving index for scenario {name!r}; served: {list(engines)}")
        return engines[name]

    def parse_filters(e: ScenarioSearch, filters: list[str]) -> dict[str, str]:
        where = {}
        for f in filters:
            key, sep, value = f.partition(":")
            if not sep or not value.strip():
                raise HTTPException(422, f"filter {f[:50]!r}: expected ATTRIBUTE:VALUE, e.g. color:Red")
            if key not in e.index.filterable:
                raise HTTPException(422, f"filter {key[:50]!r} is not an attribute; filterable: {e.index.filterable}")
            where[key] = value.strip()
        return where

    def answer(e: ScenarioSearch, hits: list[dict], query: dict) -> dict:
        results = [{**h, **e.index.product(e.index.row[h["product_id"]]), "image_url": f"/images/{h['product_id']}"}
                   for h in hits]
        return {"scenario": e.scenario, "query": query, "results": results}

    K = Query(10, ge=1, le=cfg.max_k, description=f"results, 1..{cfg.max_k}")
    FILTERS = Query([], description="ATTRIBUTE:VALUE, repeatable; case-insensitive")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "search.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        if name not in PAGES:
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC / name, media_type=PAGES[name])

    @app.get("/api/search")
    def search_text(q: str = Query(max_length=cfg.max_query_chars), k: int = K, scenario: str | None = None,
                    filter: list[str] = FILTERS) -> dict:
        """Products for a typed query, best first."""
        if not q.strip():
            raise HTTPException(422, f"q is empty: 1 to {cfg.max_query_chars} characters")
        e = engine(scenario)
        return answer(e, e.search_text(q.strip(), k, parse_filters(e, filter)), {"text": q.strip()})

    @app.post("/api/search/image")
    def search_image(image: UploadFile = File(description="a photo: JPEG, PNG, WebP..."), k: int = K,
                     scenario: str | None = None, filter: list[str] = FILTERS) -> dict:
        """Products that look like the uploaded photo, best first."""
        e = engine(scenario)
        where = parse_filters(e, filter)
        return answer(e, e.search_image(read_image(image.file.read(), cfg.max_image_pixels), k, where),
                      {"image": image.filename})

    @app.get("/api/similar/{product_id}")
    def similar(product_id: str, k: int = K, scenario: str | None = None, filter: list[str] = FILTERS) -> dict:
        """More like this: the products nearest to this one's picture."""
        e = engine(scenario)
        if product_id not in e.index.row:
            raise HTTPException(404, f"no product {product_id[:80]!r} in the {e.scenario} index")
        return answer(e, e.similar(product_id, k, parse_filters(e, filter)), {"like": product_id})

    @app.get("/api/products/{product_id}")
    def product(product_id: str, scenario: str | None = None) -> dict:
        e = engine(scenario)
        if product_id not in e.index.row:
            raise HTTPException(404, f"no product {product_id[:80]!r} in the {e.scenario} index")
        return {**e.index.product(e.index.row[product_id]), "image_url": f"/images/{product_id}"}

    @app.get("/api/facets")
    def facets(scenario: str | None = None, top: int = Query(12, ge=1, le=100)) -> dict:
        """The filterable attributes and their most common values (the page's filter chips)."""
        e = engine(scenario)
        counts = {c: e.index.items[c].dropna().astype(str).value_counts().head(top).to_dict() for c in e.index.filterable}
        return {"scenario": e.scenario, "scenarios": list(engines), "attributes": {c: v for c, v in counts.items() if v}}

    @app.get("/api/health")
    def health() -> dict:
        return {"scenarios": {s: len(e.index.items) for s, e in engines.items()}, "encoder": cfg.encoder,
                "torch_imported": "torch" in sys.modules, "arena": list(arena) if arena else None}

    @app.get("/images/{product_id}", include_in_schema=False)
    def product_image(product_id: str) -> FileResponse:
        relative = images.get(product_id)  # a lookup, never a path built from the request
        path = catalog.resolve_image(clean, relative) if isinstance(relative, str) else None
        if path is None or not path.is_file():
            raise HTTPException(404, "no such product image")
        return FileResponse(path)

    if arena is not None:
        from catalog_search.arena.app import Arena, arena_router
        from catalog_search.arena.store import VoteStore

        store = VoteStore(votes)
        app.include_router(arena_router(Arena(*arena, root, cfg.arena.k, seed, cfg.encoder), store, cfg.arena,
                                        cfg.max_query_chars))
        app.state.store = store
    app.state.engines = engines
    return app


def read_image(data: bytes, max_pixels: int) -> Image.Image:
    """An uploaded photo, decoded; 422 for anything that is not one, or whose header announces
    more than `max_pixels` pixels (a decompression bomb is refused before it is decoded)."""
    if not data:
        raise HTTPException(422, "the image upload is empty")
    try:
        with warnings.catch_warnings():  # PIL warns past its own limit; the check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        if im.width * im.height > max_pixels:
            raise HTTPException(422, f"image is {im.width}x{im.height} pixels, over serve.max_image_pixels={max_pixels}")
        im.load()
        return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise HTTPException(422, f"not a readable image ({type(e).__name__})") from None


def serve(root: Path, cfg: ServeParams, arena: tuple[str, str] | None, votes: Path) -> None:
    from catalog_search.serving.http import server

    app = create_app(root, cfg, arena, votes)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"serve: bound to {cfg.host}: only Host headers {[*LOOPBACK, *cfg.allowed_hosts]} are answered "
              "(serve.allowed_hosts); put TLS and authentication in front of it", flush=True)
    print(f"serve: http://{cfg.host}:{cfg.port}/ ({', '.join(app.state.engines) or 'no search index'}"
          f"{f'; arena {arena[0]} vs {arena[1]} at /arena/' if arena else ''}; query encoder {cfg.encoder}); "
          "Ctrl-C to stop", flush=True)
    server(app, cfg.host, cfg.port, cfg.read_timeout_seconds).run()

