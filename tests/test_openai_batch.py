"""clean.backend openai_batch against a local server that speaks the Files and Batches API
(tests/fake_openai.py), with its failure modes. Every test ends on the same promise: the final
catalog has every kept product, the server billed each request once per attempt the ledger
recorded and never again once answered, and the ledger has a final state for every item."""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from catalog_search import catalog
from catalog_search.cleaning.openai_batch.requests import RequestBuilder, RequestFiles
from catalog_search.cleaning.openai_batch.store import StateStore
from catalog_search.cleaning.openai_batch.workflow import BatchCleaning, NotFinished, run_step
from fake_openai import FakeOpenAI

KEY = "sk-test-0123456789abcdefNOTREAL"
PER_FILE = 50


@pytest.fixture
def fake(demo_raw, monkeypatch):
    _, df = demo_raw
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    server = FakeOpenAI({r["title_raw"]: r for r in df.to_dict("records")}, KEY)
    yield server
    server.close()


@pytest.fixture
def cfg(clean_params, fake, tmp_path) -> dict:
    cfg = copy.deepcopy(clean_params)
    cfg["workers"] = 0
    cfg["openai_batch"].update(base_url=fake.base_url, state_dir=str(tmp_path / "state"), poll_seconds=0.01,
                               max_poll_seconds=0.05, max_retries=3, max_requests_per_file=PER_FILE)
    return cfg


def cleaning(demo_raw, cfg, tmp_path) -> BatchCleaning:
    return BatchCleaning(demo_raw[0], tmp_path / "clean", cfg)


def ledger(cfg) -> dict[str, tuple[str, int, str | None]]:
    with sqlite3.connect(Path(cfg["openai_batch"]["state_dir"]) / "state.sqlite") as db:
        return {k: (s, a, r) for k, s, a, r in db.execute("SELECT key, status, attempts, reason FROM items")}


def check_nothing_lost_nothing_twice(fake: FakeOpenAI, cfg: dict, out_dir: Path):
    rules = catalog.load(Path(cfg["openai_batch"]["state_dir"]) / "rules/catalog.parquet")
    final = catalog.load(out_dir / "catalog.parquet")
    assert sorted(final["product_id"]) == sorted(rules["product_id"])
    assert not fake.sent_after_answer and set(fake.answered.values()) <= {1}
    items = ledger(cfg)
    assert len(items) >= len(final) and {s for s, _, _ in items.values()} <= {"done", "fallback"}
    assert {k: a for k, (_, a, _) in items.items() if a} == dict(fake.billed)  # billed = recorded attempts
    assert max(fake.billed.values(), default=0) <= cfg["openai_batch"]["max_attempts"]
    assert final.loc[final["cleaned_by"] == "rules", "clean_note"].notna().all()
    return final, items


def test_every_product_answered_once_and_titles_follow_the_picture(demo_raw, fake, cfg, tmp_path, capsys):
    _, raw = demo_raw
    wrong = raw[raw["title_raw"].str.contains("Red") & (raw["color"] != "Red")]["title_raw"]  # title contradicts photo
    odd_one = raw["title_raw"].iloc[7]
    fake.answer_faults[odd_one] = ["wrong_color"]  # the VLM gets one colour wrong
    job = cleaning(demo_raw, cfg, tmp_path)
    metrics = job.run()
    final, _ = check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    n = len(final)
    batch = metrics["openai_batch"]
    assert batch["answered"] == batch["requests_run"] == n and batch["fallen_back"] == 0
    assert batch["input_tokens"] == 120 * n  # the fake's usage, summed
    assert metrics["title_exact_match"] == 1.0 > batch["rules_baseline"]["title_exact_match"]
    assert metrics["attribute_agreement"]["color"] == round((n - 1) / n, 4)
    assert metrics["attribute_agreement"]["category"] == 1.0
    fixed = final.set_index("title_raw").loc[list(wrong)]
    assert (fixed["title"] == fixed["title_true"]).all() and (fixed["cleaned_by"] == "openai_batch").all()
    assert final.set_index("title_raw").loc[odd_one, "color"] != raw.set_index("title_raw").loc[odd_one, "color"]
    uploads = fake.uploads()
    assert len(uploads) == math.ceil(n / PER_FILE) and all(len(u.splitlines()) <= PER_FILE for u in uploads)
    assert fake.bad_auth == 0
    first = dict(fake.calls)
    job.close()
    again = cleaning(demo_raw, cfg, tmp_path).run()  # a re-run sends nothing and gives the same catalog
    assert again["openai_batch"] == batch and fake.calls[("POST", "/v1/batches")] == first[("POST", "/v1/batches")]
    files = [p for p in Path(cfg["openai_batch"]["state_dir"]).rglob("*") if p.is_file()]
    files += [p for p in (tmp_path / "clean").rglob("*") if p.is_file()]
    assert not [p for p in files if KEY.encode() in p.read_bytes()]
    assert KEY not in json.dumps(metrics) and KEY not in capsys.readouterr().out


def test_http_errors_are_retried_and_an_outage_resumes(demo_raw, fake, cfg, tmp_path, capsys):
    cfg["openai_batch"]["max_enqueued_tokens"] = 10**9  # every file in flight at once
    fake.http_faults[("POST", "/v1/files")] = [(500, {}), (500, {})]
    fake.http_faults[("POST", "/v1/batches")] = [(429, {"retry-after": "0.01"})]
    fake.http_faults[("GET", "/v1/batches/{id}")] = [(503, {})]
    fake.http_faults[("GET", "/v1/files/{id}/content")] = [(500, {})]
    job = cleaning(demo_raw, cfg, tmp_path)
    job.run_rules()
    job.prepare()
    assert len(job.dispatch()) == 3
    assert fake.calls[("POST", "/v1/files")] == 3 + 2 and fake.calls[("POST", "/v1/batches")] == 3 + 1
    fake.http_faults[("GET", "/v1/batches/{id}")] = [(500, {})] * 20  # longer than the client's retries
    with pytest.raises(Exception, match="injected 500"):
        job.monitor(wait=False)
    fake.http_faults[("GET", "/v1/batches/{id}")] = [(500, {})] * 5  # monitor --wait rides it out
    job.monitor(wait=True)
    job.close()
    fake.http_faults[("POST", "/v1/files")] = [(500, {})] * 20  # an outage while a new round goes out
    cfg = copy.deepcopy(cfg)
    cfg["openai_batch"]["prompt"] += "\nBe brief."  # new requests for every product
    assert run_step("all", demo_raw[0], tmp_path / "clean", cfg, tmp_path / "clean.json") == 1
    assert "re-run the same step to resume" in capsys.readouterr().err
    fake.http_faults.clear()
    assert run_step("all", demo_raw[0], tmp_path / "clean", cfg, tmp_path / "clean.json") == 0
    final, _ = check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    assert (final["cleaned_by"] == "openai_batch").all()


def test_bad_answers_are_retried_then_fall_back_to_rules(demo_raw, fake, cfg, tmp_path):
    titles = demo_raw[1]["title_raw"]
    faults = {titles[1]: ["malformed"], titles[2]: ["schema"] * 3, titles[3]: ["error"], titles[4]: ["refusal"]}
    fake.answer_faults.update(faults)
    metrics = cleaning(demo_raw, cfg, tmp_path).run()
    final, items = check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    by_title = final.set_index("title_raw")
    assert by_title.loc[titles[2], "cleaned_by"] == "rules" and by_title.loc[titles[2], "clean_note"].startswith("schema:")
    assert (by_title.loc[[titles[1], titles[3], titles[4]], "cleaned_by"] == "openai_batch").all()
    batch = metrics["openai_batch"]
    assert batch["invalid_answers"] == 1 + 3 + 1 and batch["failed_requests"] == 1
    assert batch["requests_run"] == len(final) + 1 + 2 + 1 + 1 and batch["fallback_reasons"] == {"schema": 1}
    assert sorted(a for _, a, _ in items.values() if a > 1) == [2, 2, 2, 3]


def test_cancelled_and_expired_batches_retry_only_the_unanswered(demo_raw, fake, cfg, tmp_path):
    cfg["openai_batch"]["max_enqueued_tokens"] = 10**9
    job = cleaning(demo_raw, cfg, tmp_path)
    job.run_rules()
    job.prepare()
    fake.hold = True
    job.dispatch()
    job.monitor(wait=False)
    with pytest.raises(NotFinished, match="monitor --wait"):
        job.finalize()
    assert len(job.cancel()) == 3  # cancelled with half of each batch done
    job.monitor(wait=True)
    states = [s for s, _, _ in ledger(cfg).values()]
    assert states.count("done") == sum(n // 2 for n in (50, 50, 20)) and states.count("failed") == 60
    fake.hold = False
    fake.batch_modes = ["expire"]  # the retry round's first batch expires half done
    metrics = job.run()
    final, items = check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    assert (final["cleaned_by"] == "openai_batch").all()
    assert sorted({s for _, _, s, _ in job.store.batch_rows()}) == ["cancelled", "completed", "expired"]
    batch = metrics["openai_batch"]  # unanswered by the cancel, then by the expiry: never ran, never billed
    assert batch["failed_requests"] == 0 and batch["requests_not_run"] == 60 + 25
    assert batch["requests_run"] == len(final) and set(fake.billed.values()) == {1}


def test_failed_batch_is_retried_without_spending_attempts(demo_raw, fake, cfg, tmp_path):
    fake.batch_modes = ["fail"]
    metrics = cleaning(demo_raw, cfg, tmp_path).run()
    final, items = check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    batch = metrics["openai_batch"]
    assert batch["answered"] == batch["requests_run"] == len(final) and batch["requests_not_run"] == PER_FILE
    assert {a for _, a, _ in items.values()} == {1} and sum(fake.sent.values()) == len(final) + PER_FILE


def test_kill_after_a_batch_is_created_adopts_it(demo_raw, fake, cfg, tmp_path, monkeypatch):
    record = StateStore.record_batch
    monkeypatch.setattr(StateStore, "record_batch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    job = cleaning(demo_raw, cfg, tmp_path)
    job.run_rules()
    job.prepare()
    with pytest.raises(KeyboardInterrupt):  # killed between batches.create and writing its id down
        job.dispatch()
    job.close()
    monkeypatch.setattr(StateStore, "record_batch", record)
    cleaning(demo_raw, cfg, tmp_path).run()
    check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    assert fake.calls[("POST", "/v1/batches")] == 3 and fake.calls[("POST", "/v1/files")] == 3
    assert fake.calls[("GET", "/v1/batches")] >= 1  # listed to find the orphan


def test_dry_run_a_missing_key_and_a_busy_ledger(demo_raw, fake, cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY")
    holder = cleaning(demo_raw, cfg, tmp_path)  # e.g. `dvc repro` running while someone runs a step by hand
    assert run_step("dispatch", demo_raw[0], tmp_path / "clean", cfg) == 2
    assert "in use by another clean step" in capsys.readouterr().err
    holder.close()
    assert run_step("prepare", demo_raw[0], tmp_path / "clean", cfg, dry_run=True) == 0
    out = capsys.readouterr().out
    assert "dry run, nothing sent: 120 requests (0 retries, 0 answered before under other settings) in 3 file(s)" \
        in out and "$" in out
    assert not fake.calls and not ledger(cfg) and not (Path(cfg["openai_batch"]["state_dir"]) / "requests").exists()
    assert run_step("all", demo_raw[0], tmp_path / "clean", cfg) == 2
    err = capsys.readouterr().err
    assert "OPENAI_API_KEY is not set" in err and "--dry-run" in err and not fake.calls


def test_request_files_respect_count_and_size_limits(tmp_path):
    recorded = []
    files = RequestFiles(tmp_path, 1, max_requests=3, max_bytes=25, on_file=lambda *args: recorded.append(args))
    for n in range(7):
        files.add(f"k{n}", f"p{n}", b"x" * 9 + b"\n", tokens=100 + n)  # 10 bytes: two fit in 25
    files.flush()
    assert [len(items) for _, items, _, _ in recorded] == [2, 2, 2, 1]
    assert [tokens for *_, tokens in recorded] == [201, 205, 209, 106]  # per file: what the enqueued budget counts
    assert all(p.stat().st_size == b <= 25 for p, _, b, _ in recorded) and not list(tmp_path.glob("*.partial"))
    assert not files.fits(b"y" * 26)
    builder = RequestBuilder("m", "prompt", {"type": "json_schema"}, 64, "low", 100)
    key = builder.key("p1", "Red Dress", b"img")
    assert key == builder.key("p1", "Red Dress", b"img") != builder.key("p1", "Red Dress", b"img2")
    assert key != RequestBuilder("m", "another prompt", {"type": "json_schema"}, 64, "low", 100).key("p1", "Red Dress", b"img")


def test_dvc_stage_killed_between_dispatch_and_finalize_resumes(tmp_path, fake, monkeypatch):
    """The real stage under `dvc repro`, SIGKILLed while its batches run, then re-run; then the CLI
    steps by hand after a prompt change, which the next `dvc repro` picks up without sending again."""
    from test_pipeline import default_params, project, run, stages_run

    from catalog_search.cli import main

    params = default_params()
    params["data"]["demo"].update(n_products=60, image_size=32)
    params["clean"]["workers"] = 0
    params["clean"]["backend"] = "openai_batch"
    params["clean"]["openai_batch"].update(base_url=fake.base_url, poll_seconds=0.05, max_poll_seconds=0.2,
                                           max_requests_per_file=25)
    root = project(tmp_path / "project", params)
    run(["dvc", "repro", "ingest"], root)
    raw = catalog.load(root / "data/raw/catalog.parquet")
    fake.truth.update({r["title_raw"]: r for r in raw.to_dict("records")})
    fake.hold = True
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    stage = subprocess.Popen(["dvc", "repro", "clean"], cwd=root, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = root / "data/openai_batch/state.sqlite"
    deadline = time.time() + 120
    while not (state.exists() and fake.calls[("GET", "/v1/batches/{id}")] >= 3):  # dispatched and polling
        assert time.time() < deadline and stage.poll() is None, "the stage did not get to monitoring"
        time.sleep(0.1)
    os.killpg(stage.pid, signal.SIGKILL)
    stage.wait()
    fake.hold = False
    log = run(["dvc", "repro", "clean"], root)
    assert "clean" in stages_run(log.stdout)
    assert fake.calls[("POST", "/v1/files")] == fake.calls[("POST", "/v1/batches")] == 3
    with sqlite3.connect(state) as db:
        items = dict(db.execute("SELECT key, status FROM items").fetchall())
    assert set(items.values()) == {"done"} and set(fake.sent.values()) == {1} and len(items) == len(fake.sent)
    final = catalog.load(root / "data/clean/catalog.parquet")
    assert len(final) == json.loads((root / "metrics/clean.json").read_text())["openai_batch"]["answered"]
    for path in [root / "dvc.lock", root / "metrics/clean.json", *state.parent.rglob("*")]:
        assert not path.is_file() or KEY.encode() not in path.read_bytes()
    assert KEY not in log.stdout + log.stderr

    params["clean"]["openai_batch"]["prompt"] += "Answer in English.\n"  # by hand, one step at a time
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(root)
    for step in (["prepare"], ["dispatch"], ["monitor", "--wait"], ["finalize"]):
        with pytest.raises(SystemExit) as done:
            main(["clean", *step])
        assert done.value.code == 0
    assert fake.calls[("POST", "/v1/batches")] == 6
    log = run(["dvc", "repro", "clean"], root)  # the stage finds every answer in the ledger
    assert "clean" in stages_run(log.stdout) and fake.calls[("POST", "/v1/batches")] == 6
    assert set(fake.sent.values()) == {1} and len(fake.sent) == 2 * len(final)


def test_schema_is_strict_and_answers_are_checked_against_it():
    from catalog_search.cleaning.openai_batch.schema import answer_model, parse_answer, response_format

    model = answer_model({"color": ["Black", "Red"]})
    sent = response_format(model)["json_schema"]
    assert sent["strict"] is True and sent["schema"]["additionalProperties"] is False
    assert set(sent["schema"]["required"]) == {"clean_title", "category", "style", "material", "color", "pattern"}
    fields = dict(clean_title="Red Dress", category="Apparel", style=None, material=None, pattern="solid")
    answer, problem = parse_answer(model, json.dumps({**fields, "color": "Red"}))
    assert problem is None and answer.color == "Red"
    assert parse_answer(model, json.dumps({**fields, "color": "Blue"}))[1].startswith("schema: color")
    assert parse_answer(model, json.dumps({**fields, "color": "Red", "clean_title": "  "}))[1].startswith("schema:")
    assert parse_answer(model, '{"clean_title": "Red')[1].startswith("malformed JSON")


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_a_lost_create_answer_adopts_the_batch_instead_of_paying_twice(demo_raw, fake, cfg, tmp_path, fault, capsys):
    """The API creates the batch, then its answer is lost (a gateway 500, a dropped connection):
    the openai client would retry the POST and create (and bill) a second batch from the same file."""
    fake.create_faults = [fault, fault]
    metrics = cleaning(demo_raw, cfg, tmp_path).run()
    final, _ = check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    assert len(fake.batches) == 3 and fake.calls[("POST", "/v1/batches")] == 3  # one per request file, never twice
    assert sorted(b["input_file_id"] for b in fake.batches.values()) == sorted(
        f for f, v in fake.files.items() if v["purpose"] == "batch")
    assert set(fake.billed.values()) == {1} and metrics["openai_batch"]["orphan_batches"] == 0
    assert capsys.readouterr().out.count("was created after all") == 2


def test_a_finished_batch_without_its_file_ids_stays_open(demo_raw, fake, cfg, tmp_path, capsys):
    """`completed` with completed=50 and output_file_id null: settling it would re-send all 50."""
    title = demo_raw[1]["title_raw"].iloc[3]
    fake.answer_faults[title] = ["error"]  # failed > 0: its reason is in the error file, also late
    fake.late_file_ids = 3
    metrics = cleaning(demo_raw, cfg, tmp_path).run()
    final, items = check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    assert "file id is not there yet" in capsys.readouterr().out
    assert sorted(fake.billed.values()).count(2) == 1 and (final["cleaned_by"] == "openai_batch").all()
    assert metrics["openai_batch"]["failed_requests"] == 1 and metrics["openai_batch"]["requests_not_run"] == 0
    fresh = copy.deepcopy(cfg)  # waiting is bounded: the stage stops with nothing settled, a re-run collects it
    fresh["openai_batch"].update(state_dir=str(tmp_path / "state2"), file_id_wait_minutes=0.001)
    fake.late_file_ids = 10**6
    job = BatchCleaning(demo_raw[0], tmp_path / "clean2", fresh)
    job.run_rules()
    job.prepare()
    job.dispatch()
    with pytest.raises(Exception, match="without its output file id. Nothing was settled"):
        job.monitor(wait=True)
    assert {s for s, _, _ in ledger(fresh).values()} == {"sent", "prepared"} and not job.store.status_counts().get("failed")


def test_batches_that_fail_as_a_whole_spend_no_attempts_and_come_back(demo_raw, fake, cfg, tmp_path, capsys):
    """An account that admits 2 open batches, 5 request files sent at once: 3 batches fail
    token_limit_exceeded. Nothing ran, so nothing is billed or counted; with max_attempts=1 their
    products keep the rules row for now, and raising max_attempts sends them again."""
    cfg["openai_batch"].update(max_requests_per_file=25, max_enqueued_tokens=10**9, max_attempts=1)
    fake.max_open_batches = 2
    batch = cleaning(demo_raw, cfg, tmp_path).run()["openai_batch"]
    check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    assert batch["requests_run"] == batch["answered"] == 50 and batch["requests_not_run"] == 25 + 25 + 20
    assert batch["failed_requests"] == 0 and batch["fallback_reasons"] == {"batch failed": 70}  # one bucket, 3 batches
    assert "lower clean.openai_batch.max_enqueued_tokens" in capsys.readouterr().out
    cfg["openai_batch"]["max_attempts"] = 3
    batch = cleaning(demo_raw, cfg, tmp_path).run()["openai_batch"]  # round 1: 2 ok + 1 refused; back off; round 2
    final, items = check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    assert (final["cleaned_by"] == "openai_batch").all() and set(fake.billed.values()) == {1}
    assert batch["requests_run"] == len(final) and batch["requests_not_run"] == 70 + 20
    assert "next round in" in capsys.readouterr().out


def test_one_request_file_in_flight_by_default(demo_raw, fake, cfg, tmp_path):
    cfg["openai_batch"]["max_requests_per_file"] = 25
    fake.max_open_batches = 1  # the smallest account: any second open batch would fail
    batch = cleaning(demo_raw, cfg, tmp_path).run()["openai_batch"]
    check_nothing_lost_nothing_twice(fake, cfg, tmp_path / "clean")
    assert len(fake.batches) == 5 and {b["status"] for b in fake.batches.values()} == {"completed"}
    assert batch["requests_not_run"] == 0 and batch["answered"] == 120


def test_orphan_batches_are_reported_and_cancellable(demo_raw, fake, cfg, tmp_path, capsys):
    from openai import OpenAI

    job = cleaning(demo_raw, cfg, tmp_path)
    job.run_rules()
    job.prepare()
    fake.hold = True
    job.dispatch()
    file_id = next(f for f, v in fake.files.items() if v["purpose"] == "batch")
    orphan = OpenAI(base_url=fake.base_url).batches.create(  # another client, or an older version's retry
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    job.monitor(wait=False)
    assert f"batch {orphan.id} (validating) was created from requests-00001.jsonl" in capsys.readouterr().out
    assert orphan.id in job.cancel() and fake.batches[orphan.id]["status"] == "cancelling"
    fake.hold = False
    metrics = job.run()
    assert metrics["openai_batch"]["orphan_batches"] == 1 and metrics["openai_batch"]["answered"] == 120


def test_one_rules_pass_and_a_warning_before_a_settings_change_rebills(demo_raw, fake, cfg, tmp_path, capsys,
                                                                       monkeypatch):
    from catalog_search.cleaning.openai_batch import workflow

    passes = []
    monkeypatch.setattr(workflow, "clean_catalog", lambda *a: passes.append(1) or clean_catalog(*a))
    from catalog_search.cleaning.rules import clean_catalog

    assert run_step("all", demo_raw[0], tmp_path / "clean", cfg, tmp_path / "clean.json") == 0
    assert len(passes) == 1
    capsys.readouterr()
    cfg["image"]["format"] = "jpg"  # a rules-stage setting: every image's bytes change
    calls = dict(fake.calls)
    assert run_step("prepare", demo_raw[0], tmp_path / "clean", cfg, dry_run=True) == 0
    out = capsys.readouterr().out
    assert "120 answered before under other settings" in out and dict(fake.calls) == calls
    assert "WARNING: 120 products already answered under other settings will be sent again" in out
    assert "image bytes changed (clean.image.* or the photo) for 120" in out and "request settings" not in out
    cfg["image"]["format"] = "png"  # back: the answers are reused, nothing is sent
    assert run_step("all", demo_raw[0], tmp_path / "clean", cfg, tmp_path / "clean.json") == 0
    assert "WARNING" not in capsys.readouterr().out and dict(fake.calls) == calls
