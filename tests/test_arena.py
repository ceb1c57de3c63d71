"""The arena for real, inside `catalog-search serve`: uvicorn on 127.0.0.1, a headless Debian
chromium driven by Playwright, 50 concurrent clients, hostile requests, a vote flood. Embeddings
are random (two "scenarios"), the catalog and its images are the real demo ones: no model is
needed for caption/image rounds."""
import concurrent.futures
import shutil

import httpx
import numpy as np
import pandas as pd
import pytest

from catalog_search import catalog
from catalog_search.arena import store as store_module
from catalog_search.arena.store import VoteStore, wilson
from catalog_search.config import ArenaParams, ServeParams
from catalog_search.index import save_embeddings
from catalog_search.serving.app import create_app
from conftest import serving

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def project(demo_shards, tmp_path_factory):
    """A project folder with data/clean (the demo catalog) and two scenarios' embeddings."""
    shards, kept = demo_shards
    root = tmp_path_factory.mktemp("arena_project")
    clean = root / "data/clean"
    shutil.copytree(shards.parent / "images", clean / "images")
    catalog.save(kept, clean / "catalog.parquet")
    test = kept[kept["split"] == "test"].reset_index(drop=True)
    texts = sorted({c for caps in test["captions"] for c in caps})
    rng = np.random.default_rng(0)
    for name in ("zero_shot", "dual_lora"):
        save_embeddings(root / "data/embeddings" / name, rng.normal(size=(len(test), 16)),
                        rng.normal(size=(len(texts), 16)), test[["product_id", "title", "captions", "color"]],
                        pd.DataFrame({"text": texts}), {"scenario": name})
    return root


def arena_server(project, db, **limits):
    """The serve app with only the arena (no search index here), on a free loopback port."""
    cfg = ServeParams(scenarios=["dual_lora"], arena=ArenaParams(k=4, **limits))
    return serving(create_app(project, cfg, arena=("zero_shot", "dual_lora"), votes=db, seed=0))


@pytest.fixture
def server(project, tmp_path):
    """Arena limits lifted (50 clients from one address); yields (arena base url, db path)."""
    db = tmp_path / "votes.sqlite"
    with arena_server(project, db, votes_per_minute=100_000, sessions_per_minute=1000) as url:
        yield url + "/arena", db


def test_wilson_interval():
    assert wilson(0, 0) == [0.0, 1.0]
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and 0 < wilson(0, 10)[1] < 0.35


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is installed by `make setup`")
def test_browser_votes_with_click_and_key(server, tmp_path, request):
    from playwright.sync_api import sync_playwright

    url, _ = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_function("() => document.querySelectorAll('#row-A .hit img').length == 4")
        assert page.locator("#row-B .hit img").count() == 4
        page.wait_for_function("() => [...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)",
                               timeout=10_000)  # every product image really loads
        first = page.locator("#query").inner_text()
        ready = "() => document.body.dataset.state == 'ready' && document.getElementById('count').textContent == "
        page.click("text=A is better")
        page.wait_for_function(ready + "'1'")  # voted, and the next round is on screen
        page.keyboard.press("b")
        page.wait_for_function(ready + "'2'")
        page.keyboard.press("t")
        page.wait_for_function(ready + "'3'")
        page.check("input[value=image]")
        page.wait_for_selector("#query img")
        page.screenshot(path=str(tmp_path / "arena.png"), full_page=True)
        shot = request.config.rootpath / "tests" / "artifacts"
        shot.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "arena.png", shot / "arena.png")
        page.goto(url + "/stats")
        assert "3 votes" in page.locator("h1").inner_text()
        table = page.locator("#stats").inner_text()
        assert "zero_shot" in table and "dual_lora" in table and "tie" in table
        browser.close()
    assert first.startswith("“")
    stats = httpx.get(url + "/api/stats").json()
    pair = stats["pairs"]["dual_lora vs zero_shot"]
    assert stats["votes"] == 3 and pair["ties"] == 1 and pair["zero_shot"]["wins"] + pair["dual_lora"]["wins"] == 2


def test_fifty_clients_hundred_votes_each(server):
    url, db = server

    def client(i: int) -> int:
        done = 0
        with httpx.Client(base_url=url + "/", timeout=30) as c:
            for j in range(100):
                r = c.get("api/round", params={"kind": "caption" if j % 2 else "image"})
                r.raise_for_status()
                vote = {"round_id": r.json()["round_id"], "choice": ["A", "B", "tie", "skip"][(i + j) % 4]}
                assert c.post("api/vote", json=vote).status_code == 200
                assert c.post("api/vote", json=vote).status_code == 409  # a replay is refused
                done += 1
        return done

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        assert sum(pool.map(client, range(50))) == 5000
    store = VoteStore(db)
    assert store.count() == 5000
    assert store._db.execute("SELECT COUNT(DISTINCT round_id) FROM votes").fetchone()[0] == 5000
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    stats = store.stats()
    assert stats["votes"] == 5000 and stats["pairs"]["dual_lora vs zero_shot"]["skips"] == 1250


def test_bad_requests_get_4xx_and_change_nothing(server):
    url, db = server
    site = url.removesuffix("/arena")  # images are served by the app, outside /arena
    with httpx.Client(base_url=url + "/") as c:
        round_id = c.get("api/round").json()["round_id"]
        bad = [
            c.post("api/vote", content=b"{not json", headers={"content-type": "application/json"}),
            c.post("api/vote", json={"round_id": round_id}),
            c.post("api/vote", json={"round_id": round_id, "choice": "C"}),
            c.post("api/vote", json={"round_id": round_id, "choice": "A", "extra": 1}),
            c.post("api/vote", json={"round_id": "../../etc", "choice": "A"}),
            c.post("api/vote", json={"round_id": "no-such-round", "choice": "A"}),
            c.post("api/vote", content=b"x" * 200_000, headers={"content-type": "application/json"}),
            c.get("api/round", params={"kind": "sql"}),
            c.get("api/round", params={"kind": "text"}),
            c.get(site + "/images/../../params.yaml"),
            c.get(site + "/images/..%2F..%2Fdata%2Fclean%2Fcatalog.parquet"),
            c.get(site + "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
            c.get(site + "/images/no-such-product"),
        ]
        codes = [r.status_code for r in bad]
        assert all(400 <= code < 500 for code in codes), codes
        assert codes[0] == 422 and codes[5] == 404 and codes[6] == 413
        assert VoteStore(db).count() == 0
        ok = c.post("api/vote", json={"round_id": round_id, "choice": "A"})
        assert ok.status_code == 200 and ok.json()["votes"] == 1  # still serving, state intact
        pid = c.get("api/round", params={"kind": "image"}).json()["query"]["product_id"]
        image = c.get(f"{site}/images/{pid}")
        assert image.status_code == 200 and image.headers["content-type"].startswith("image/")


def test_one_voter_cannot_flip_the_standings(project, tmp_path):
    """Default limits: 20 votes a minute per session, 10 new sessions a minute per address; a vote
    counts only from the session its round was shown to; a forged cookie is no session."""
    db = tmp_path / "votes.sqlite"
    with arena_server(project, db) as url, httpx.Client(base_url=url + "/arena/") as voter:
        codes = []
        for _ in range(30):
            round_id = voter.get("api/round").json()["round_id"]
            codes.append(voter.post("api/vote", json={"round_id": round_id, "choice": "A"}).status_code)
        assert codes == [200] * 20 + [429] * 10
        other = voter.get("api/round").json()["round_id"]
        with httpx.Client(base_url=url + "/arena/") as thief:
            assert thief.post("api/vote", json={"round_id": other, "choice": "B"}).status_code == 403  # no session
            thief.cookies.set("arena_session", "forged.0123456789abcdef0123456789abcdef", path="/arena")
            assert thief.post("api/vote", json={"round_id": other, "choice": "B"}).status_code == 403
        minted = [httpx.get(url + "/arena/api/round").status_code for _ in range(12)]  # fresh cookie-less clients
        assert minted.count(429) >= 2 and minted[0] == 200  # 10 sessions a minute; the voter's was the 1st
    assert VoteStore(db).count() == 20


def test_hostile_json_is_422_and_never_logged(server, capfd):
    url, db = server
    with httpx.Client(base_url=url + "/") as c:
        round_id = c.get("api/round").json()["round_id"]
        hostile = [b'{"round_id": NaN, "choice": "A"}', b'{"round_id": "%s", "choice": Infinity}' % round_id.encode(),
                   b'{"round_id": "\\ud800SECRETTEXT", "choice": "A"}', b'{"round_id": "\ud800SECRETTEXT", "choice": "A"}',
                   b'{"round_id": "%s", "choice": "\udfff"}' % round_id.encode(), b'[1e999999]', b'"\ud83d"']
        codes = [c.post("api/vote", content=body, headers={"content-type": "application/json"}).status_code
                 for body in hostile]
        assert codes == [422] * len(hostile)
        assert c.post("api/vote", json={"round_id": round_id, "choice": "A"}).status_code == 200
    log = capfd.readouterr()
    assert "SECRETTEXT" not in log.out + log.err and "Traceback" not in log.err
    assert VoteStore(db).count() == 1


def test_unvoted_rounds_expire(project, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "EXPIRE_EVERY_SECONDS", 0)
    db = tmp_path / "votes.sqlite"
    with arena_server(project, db, round_ttl_minutes=0.005) as url, httpx.Client(base_url=url + "/arena/") as c:
        ids = [c.get("api/round").json()["round_id"] for _ in range(5)]
        assert c.post("api/vote", json={"round_id": ids[0], "choice": "tie"}).status_code == 200
        import time

        time.sleep(0.5)  # past the 0.3 s ttl
        c.get("api/round")
        assert c.post("api/vote", json={"round_id": ids[1], "choice": "A"}).status_code == 404  # expired
    store = VoteStore(db)
    assert store.unvoted_rounds() == 1 and store.count() == 1  # the newest round, and the vote kept
