"""`catalog-search serve` for real: the whole-catalog index (incremental, equal to a full rebuild),
the JSON API on uvicorn at 127.0.0.1, hostile and malformed input, concurrency of first queries,
security headers, half-sent requests, and the search page in headless chromium. The model is the
tiny config (random weights), the catalog and photos are the real demo ones."""
import concurrent.futures
import io
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from catalog_search import catalog
from catalog_search.config import ServeParams
from catalog_search.index import ProductIndex
from catalog_search.serving import encoders
from catalog_search.serving.app import create_app
from catalog_search.serving.catalog_index import build_image_index
from conftest import serving

CHROMIUM = shutil.which("chromium")


def tiny_merged(folder: Path) -> Path:
    from catalog_search.models.export import save_model
    from catalog_search.models.registry import create_model

    save_model(folder, create_model("tiny", "none"), None, {"scenario": "dual_lora"})
    return folder / "merged"


def clean_copy(kept: pd.DataFrame, images: Path, root: Path) -> Path:
    """data/clean under `root`: the demo catalog (pattern left out for 10 products) and its images."""
    shutil.copytree(images, root / "data/clean/images")
    kept = kept.drop(columns=["split"]).copy()
    kept.loc[kept.index[:10], "pattern"] = None
    catalog.save(kept, root / "data/clean/catalog.parquet")
    return root / "data/clean/catalog.parquet"


@pytest.fixture(scope="module")
def project(demo_shards, tmp_path_factory):
    """A project folder: data/clean, models/dual_lora/merged (tiny), the classifier's fills for the
    10 products without a pattern, and data/serving/dual_lora built from them."""
    shards, kept = demo_shards
    root = tmp_path_factory.mktemp("serve_project")
    clean = clean_copy(kept, shards.parent / "images", root)
    merged = tiny_merged(root / "models/dual_lora")
    predictions = root / "data/attributes/predictions.jsonl"
    predictions.parent.mkdir(parents=True)
    rows = catalog.load(clean)
    predictions.write_text("".join(json.dumps({"product_id": pid, "attributes": {
        "pattern": {"value": "striped", "source": "predicted", "confidence": 0.9}}}) + "\n"
        for pid in rows.loc[rows["pattern"].isna(), "product_id"]))
    build_image_index(clean, predictions, encoders.load_encoder("torch", merged), root / "data/serving/dual_lora",
                      root / "data/serving_cache/dual_lora", 32, {"scenario": "dual_lora"})
    return root


@pytest.fixture(scope="module")
def server(project):
    with serving(create_app(project, ServeParams(scenarios=["dual_lora"]))) as url:
        yield url


def png(size=(40, 40), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def test_incremental_index_equals_a_full_rebuild(demo_shards, tmp_path):
    shards, kept = demo_shards
    clean = clean_copy(kept, shards.parent / "images", tmp_path)
    encoder = encoders.load_encoder("torch", tiny_merged(tmp_path / "model"))
    calls = []
    counting = type("Counting", (), {"fingerprint": encoder.fingerprint,
                                     "encode_image": lambda self, ims: calls.append(len(ims)) or encoder.encode_image(ims)})()

    def build(out: str, cache: str) -> dict:
        return build_image_index(clean, None, counting, tmp_path / out, tmp_path / cache, 16, {"scenario": "x"})

    first = build("index", "cache")
    n = len(kept)
    assert first["embedded"] == n == sum(calls) and first["reused"] == 0
    assert build("index", "cache")["embedded"] == 0  # nothing changed: nothing embedded
    rows = catalog.load(clean)
    for path in rows["image_path"][:10]:  # 10 products get new photos
        image = Image.open(clean.parent / path)
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(clean.parent / path)
    rows = rows.drop(index=rows.index[10:15])  # 5 products leave the catalog
    new = rows.iloc[15:18].copy()  # 3 arrive, with photos of their own
    new["product_id"] = [f"new-{i}" for i in range(3)]
    for i, (_, row) in enumerate(new.iterrows()):
        Image.new("RGB", (32, 32), (40 * i, 100, 200)).save(clean.parent / f"images/new-{i}.png")
    new["image_path"] = [f"images/new-{i}.png" for i in range(3)]
    catalog.save(pd.concat([rows, new], ignore_index=True), clean)
    calls.clear()
    again = build("index", "cache")
    assert again["embedded"] == 13 == sum(calls) and again["dropped"] == 15 and again["products"] == n - 5 + 3
    full = build("rebuilt", "fresh-cache")
    assert full["embedded"] == n - 5 + 3
    a, b = ProductIndex(tmp_path / "index"), ProductIndex(tmp_path / "rebuilt")
    assert a.items["product_id"].tolist() == b.items["product_id"].tolist()
    np.testing.assert_allclose(np.asarray(a.images), np.asarray(b.images), atol=1e-5)
    queries = np.asarray(b.images[:20])
    assert [[h["product_id"] for h in q] for q in a.query(queries, 10)] == \
        [[h["product_id"] for h in q] for q in b.query(queries, 10)]
    counting.fingerprint = "another-model"  # a new model never reuses the old vectors
    assert build("index", "cache")["embedded"] == n - 5 + 3


def test_api_searches_every_product_with_filters_and_more_like_this(project, server):
    items = pd.read_parquet(project / "data/serving/dual_lora/items.parquet")
    with httpx.Client(base_url=server, timeout=60) as c:
        body = c.get("/api/search", params={"q": "red dress", "k": 5}).json()
        assert body["scenario"] == "dual_lora" and len(body["results"]) == 5
        hit = body["results"][0]
        assert {"product_id", "title", "score", "image_url", "attributes", "filled"} <= set(hit)
        assert c.get(hit["image_url"]).headers["content-type"] == "image/png"
        everything = c.get("/api/search", params={"q": "shoes", "k": 100}).json()["results"]
        assert len(everything) == min(100, len(items))  # the whole catalog, not a test split
        striped = c.get("/api/search", params={"q": "shirt", "k": 100, "filter": "pattern:STRIPED"}).json()["results"]
        filled = [r for r in striped if "pattern" in r["filled"]]
        assert len(filled) == 10 and all(r["attributes"]["pattern"].lower() == "striped" for r in striped)
        like = c.get(f"/api/similar/{hit['product_id']}", params={"k": 4}).json()
        assert len(like["results"]) == 4 and hit["product_id"] not in {r["product_id"] for r in like["results"]}
        photo = c.post("/api/search/image", params={"k": 3}, files={"image": ("q.png", png(), "image/png")}).json()
        assert len(photo["results"]) == 3
        product = c.get(f"/api/products/{hit['product_id']}").json()
        assert product["title"] == hit["title"]
        facets = c.get("/api/facets").json()
        assert facets["scenarios"] == ["dual_lora"] and "color" in facets["attributes"]
        schema = c.get("/openapi.json").json()
        assert {"/api/search", "/api/search/image", "/api/similar/{product_id}", "/api/products/{product_id}"} <= \
            set(schema["paths"])


def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, tmp_path):
    bomb = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(bomb, "PNG")  # 144 M pixels in a few kB
    huge = b"\x89PNG" + b"0" * (20 * 1024 * 1024)
    with httpx.Client(base_url=server, timeout=60) as c:
        answers = {
            "empty query": c.get("/api/search", params={"q": "  "}),
            "10 kB query": c.get("/api/search", params={"q": "x" * 10_000}),
            "k=0": c.get("/api/search", params={"q": "red", "k": 0}),
            "k=10000": c.get("/api/search", params={"q": "red", "k": 10_000}),
            "unknown filter": c.get("/api/search", params={"q": "red", "filter": "price:cheap"}),
            "filter without value": c.get("/api/search", params={"q": "red", "filter": "color"}),
            "unknown scenario": c.get("/api/search", params={"q": "red", "scenario": "nope"}),
            "20 MB upload": c.post("/api/search/image", files={"image": ("big.png", huge, "image/png")}),
            "not an image": c.post("/api/search/image", files={"image": ("x.png", b"hello, world", "image/png")}),
            "decompression bomb": c.post("/api/search/image", files={"image": ("b.png", bomb.getvalue(), "image/png")}),
            "empty upload": c.post("/api/search/image", files={"image": ("e.png", b"", "image/png")}),
            "no file": c.post("/api/search/image"),
            "malformed multipart": c.post("/api/search/image", content=b"--xyz\r\nContent-Disposition: form-data; "
                                          b"name=\"image\"\r\n\r\nunterminated",
                                          headers={"content-type": "multipart/form-data; boundary=xyz"}),
            "unknown product": c.get("/api/products/no-such-product"),
            "unknown product, similar": c.get("/api/similar/no-such-product"),
            "path in an image id": c.get("/images/..%2F..%2Fparams.yaml"),
        }
        codes = {name: r.status_code for name, r in answers.items()}
        assert all(400 <= code < 500 for code in codes.values()), codes
        assert codes["20 MB upload"] == 413 and codes["unknown product"] == 404 and codes["k=0"] == 422
        assert "pixels" in answers["decompression bomb"].json()["detail"]
        assert "filterable" in answers["unknown filter"].json()["detail"]
        assert c.get("/api/search", params={"q": "red dress"}).status_code == 200  # still serving


def test_concurrent_first_queries_load_the_encoder_once(project, monkeypatch):
    loads, real = [], encoders.load_encoder

    def slow_load(*args):
        loads.append(args)
        time.sleep(0.5)  # twelve requests arrive while the first load is running
        return real(*args)

    monkeypatch.setattr(encoders, "load_encoder", slow_load)
    with serving(create_app(project, ServeParams(scenarios=["dual_lora"]))) as url:
        def query(i: int) -> int:
            return httpx.get(url + "/api/search", params={"q": f"query {i}"}, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            assert list(pool.map(query, range(12))) == [200] * 12
    assert len(loads) == 1


def test_headers_hosts_and_half_sent_requests(project):
    cfg = ServeParams(scenarios=["dual_lora"], read_timeout_seconds=1)
    with serving(create_app(project, cfg), header_timeout=1) as url:
        for path in ("/", "/api/search?q=red", "/api/products/nope"):
            r = httpx.get(url + path)
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
            assert "script-src 'self'" in r.headers["content-security-policy"]
        assert httpx.get(url + "/api/health", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # headers never finished
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.time()
            assert s.recv(100) == b"" and time.time() - started < 4  # closed by the header deadline
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a body that stalls
            s.sendall(b"POST /api/search/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=x\r\nContent-Length: 1000\r\n\r\n--x\r\n")
            assert s.recv(200).split(b"\r\n")[0].endswith(b"408 Request Timeout")
        assert httpx.get(url + "/api/health").json()["scenarios"] == {"dual_lora": 120}  # still serving


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is installed by `make setup`")
def test_search_page_in_chromium(project, server, tmp_path, request):
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "query.png"
    photo.write_bytes(png((64, 64), (20, 20, 160)))
    decoded = "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    ready = "document.body.dataset.state == 'ready' && document.querySelectorAll('#results .card').length > 0"
    until = lambda condition: page.wait_for_function(f"() => {condition}")  # a function: CSP allows no eval
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server + "/")
        page.wait_for_selector(".chip")
        page.fill("#q", "striped shirt")
        page.press("#q", "Enter")
        until(ready)
        page.wait_for_function(decoded, timeout=10_000)  # the product photos really decode
        assert page.locator("#results .card").count() == 24
        page.click(".chip[data-attribute=pattern] >> text=striped")
        until(ready + " && document.querySelector('.chip.on') !== null")
        until("[...document.querySelectorAll('#results .attrs')].every(a => /striped/i.test(a.textContent))")
        api = httpx.get(server + "/api/search", params={"q": "striped shirt", "k": 24, "filter": "pattern:striped"}).json()
        filled = sum("pattern" in r["filled"] for r in api["results"])
        assert page.locator("#results .attrs i").count() == filled  # the classifier's fills, marked
        page.click(".chip.on")  # filter off again
        until("document.querySelector('.chip.on') === null && " + ready)
        page.set_input_files("#photo", str(photo))
        until("document.getElementById('status').textContent.includes('for your photo')")
        page.wait_for_function(decoded, timeout=10_000)
        first = page.locator("#results .card").first.get_attribute("data-product-id")
        page.locator("#results .card a.more").first.click()
        until(f"document.getElementById('status').textContent.includes('like {first}')")
        page.wait_for_function(decoded, timeout=10_000)
        assert first not in [c.get_attribute("data-product-id") for c in page.locator("#results .card").all()]
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        shot = request.config.rootpath / "tests" / "artifacts"
        shot.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "serve.png", shot / "serve.png")
        browser.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors
