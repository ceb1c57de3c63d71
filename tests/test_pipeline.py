"""End to end: the real dvc.yaml in a temporary git repo, on a tiny catalog and a tiny model."""
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT

SCENARIOS = ["chance", "zero_shot", "linear_probe", "dual_lora"]
PRETRAINED = "models/pretrained/merged/open_clip_model.safetensors"


def run(cmd: list[str], cwd, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "TQDM_DISABLE": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def project(root, params: dict):
    """This project's graph, stage scripts, package and DVC config in `root` with `params`, as a git repo."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, root / name)
    for name in ("stages", "src", ".dvc"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    return root


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    params = default_params()
    params["data"]["demo"].update(n_products=160, image_size=32)
    params["shard"].update(mini_train_size=16, samples_per_shard=50)
    params["model"] = {"name": "tiny", "pretrained": PRETRAINED, "image_size": 32}
    params["pretrain"].update(base="none", caption_size=32, train={"epochs": 2, "lr": 0.003, "batch_size": 32})
    params["train"]["scenarios"] = SCENARIOS
    params["train"]["defaults"].update(epochs=1, batch_size=32)
    params["train"]["linear_probe"] = {"epochs": 2, "lr": 0.003}
    params["wise_ft"].update(alphas=[0.0, 0.5, 1.0], alpha=0.5)
    params["serve"]["scenarios"] = ["dual_lora", "dual_lora-wise"]
    params["attributes"].update(image_size=32, epochs=1, batch_size=32, head_hidden=32, min_count=2,
                                lora={"r": 4, "alpha": 8, "dropout": 0.05, "last_blocks": 1})
    params["vlm"].update(language="tiny", image_size=32, train_rows=48, epochs=1, batch_size=16, min_count=2,
                         zero_shot_rows=4, extract_batch=64, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    root = project(tmp_path_factory.mktemp("project"), params)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    first = run(["dvc", "repro"], root)
    return root, first.stdout


def test_repro_builds_every_stage_output(repo):
    root, log = repo
    assert stages_run(log) == ({"ingest", "image_hashes", "clean", "shard", "pretrain", "report", "train_text",
                                "evaluate_text", "train_attributes", "evaluate_attributes", "predict_attributes",
                                "train_vlm", "evaluate_vlm", "extract_vlm", "serve_index@dual_lora", "serve_text_index",
                                "wise_ft@dual_lora", "serve_index@dual_lora-wise"}
                               | {f"{s}@{n}" for s in ("train", "embed", "evaluate") for n in SCENARIOS})
    assert json.loads((root / "metrics/clean.json").read_text())["rows_in"] == 160
    manifest = json.loads((root / "data/shards/manifest.json").read_text())
    assert sum(manifest["splits"][s]["samples"] for s in ("train", "val", "test")) == 160
    for s in SCENARIOS:
        assert (root / f"models/{s}/merged/open_clip_model.safetensors").exists()
        assert (root / f"models/{s}/model_card.json").exists()
        ev = json.loads((root / f"metrics/eval/{s}.json").read_text())
        assert 0 <= ev["text_to_image_R@10"] <= 1 and ev["image_to_text_mean_rank"] >= 1
        assert (root / f"dvclive/{s}/plots/metrics").is_dir()
    assert (root / "models/dual_lora/adapter/adapter_config.json").exists()
    assert not any((root / "checkpoints/dual_lora").iterdir())  # a finished run leaves no checkpoint to resume
    assert not (root / "models/linear_probe/adapter").exists()
    summary = (root / "reports/summary.md").read_text()
    assert all(f"| {s} |" in summary for s in SCENARIOS)
    assert "- dual_lora vs zero_shot: title→img_R@10" in summary and "noise" in summary
    assert (root / "reports/recall_at_k.png").stat().st_size > 1000
    assert (root / "reports/top5.png").stat().st_size > 1000
    data = json.loads((root / "metrics/summary.json").read_text())
    assert set(data["scenarios"]) == set(SCENARIOS)
    assert set(data["comparisons"]) == {"linear_probe vs zero_shot", "dual_lora vs zero_shot", "dual_lora vs linear_probe"}
    d = data["comparisons"]["dual_lora vs zero_shot"]["title_to_image_R@10"]
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1] and 0 < d["p"] <= 1
    ev = json.loads((root / "metrics/eval/dual_lora.json").read_text())
    assert ev["n_title_queries"] == ev["n_images"] and ev["n_attribute_queries"] > 5
    assert {"title_to_image_R@10", "attribute_P@10", "sampled100_image_to_text_R@1"} <= set(ev["ci95"])
    assert set(ev["attribute_queries"]) == {"category", "subcategory", "article_type", "color"}
    text = json.loads((root / "metrics/text_embedder.json").read_text())
    assert set(text) == {"base", "tuned", "gain"} and 0 <= text["tuned"]["MRR@10"] <= 1
    assert (root / "models/text_embedder/adapter_model.safetensors").exists()


def test_wise_ft_curve_ends_at_zero_shot_and_tuned_and_its_model_serves(repo):
    from safetensors.torch import load_file

    root, _ = repo
    wise = json.loads((root / "metrics/wise_ft/dual_lora.json").read_text())
    assert [c["alpha"] for c in wise["curve"]] == [0.0, 0.5, 1.0] and wise["served_alpha"] == 0.5
    n = wise["n_test"]
    for alpha, scenario in ((0.0, "zero_shot"), (1.0, "dual_lora")):  # the endpoints are those models, same protocol
        point, ev = wise["curve"][int(alpha * 2)], json.loads((root / f"metrics/eval/{scenario}.json").read_text())
        for key in ("title_to_image_R@1", "title_to_image_R@10", "attribute_P@10"):
            assert abs(point[key] - ev[key]) <= 1 / n + 1e-9, (scenario, key)
    assert 0 <= wise["curve"][1]["generic_to_image_R@10"] <= 1 and wise["generic_captions"] > 1
    assert set(wise["vs_tuned"]) == {"0.0", "0.5"} and "ci95" in wise["vs_tuned"]["0.5"]["title_to_image_R@10"]
    assert "## WiSE-FT: dual_lora interpolated with zero_shot" in (root / "reports/summary.md").read_text()
    assert json.loads((root / "metrics/summary.json").read_text())["wise_ft"]["dual_lora"] == wise["curve"]
    z = load_file(root / "models/zero_shot/merged/open_clip_model.safetensors")
    t = load_file(root / "models/dual_lora/merged/open_clip_model.safetensors")
    w = load_file(root / "models/dual_lora-wise/merged/open_clip_model.safetensors")
    moved = [k for k in t if t[k].is_floating_point() and not (t[k] == z[k]).all()]
    assert moved and all(torch.allclose(w[k], (z[k] + t[k]) / 2, atol=1e-6) for k in moved)
    served = pd.read_parquet(root / "data/serving/dual_lora-wise/items.parquet")
    assert len(served) == len(pd.read_parquet(root / "data/serving/dual_lora/items.parquet"))
    out = run(["catalog-search", "search", "red dress", "--scenario", "dual_lora-wise", "-k", "3", "--json"], root)
    assert len(out.stdout.splitlines()) == 3 and json.loads(out.stdout.splitlines()[0])["product_id"]


def test_pretraining_saw_only_train_photos_and_generic_captions(repo):
    """The aligned start (zero_shot) never saw a val/test photo, a title or an evaluation caption."""
    from safetensors.torch import load_file

    from catalog_search.shards import iter_samples

    root, _ = repo
    corpus = pd.read_parquet(root / "models/pretrained/corpus.parquet")
    split_ids = {s: {x["product_id"] for x in iter_samples(root / "data/shards", s)} for s in ("train", "val", "test")}
    assert set(corpus["product_id"]) == split_ids["train"]
    assert not set(corpus["product_id"]) & (split_ids["val"] | split_ids["test"])
    catalog_texts = set()
    for s in ("train", "val", "test"):
        for x in iter_samples(root / "data/shards", s):
            catalog_texts |= {t.lower() for t in x["captions"]} | {str(x["title"]).lower()}
    seen = {c.lower() for caps in corpus["captions"] for c in caps}
    assert seen and not seen & catalog_texts
    # every caption is a pretraining template filled with an ImageNet class name and a basic colour term only
    from catalog_search.models.captioner import COLOR_NAMES, imagenet_lemmas

    lemmas = "|".join(re.escape(x.lower()) for x in imagenet_lemmas())
    shapes = [re.escape(t.lower()).replace(r"\{label\}", f"(?:{lemmas})").replace(r"\{color\}", f"(?:{'|'.join(COLOR_NAMES)})")
              for t in default_params()["pretrain"]["templates"]]
    assert all(any(re.fullmatch(shape, c) for shape in shapes) for c in seen)
    pretrained, zero_shot = load_file(root / PRETRAINED), load_file(root / "models/zero_shot/merged/open_clip_model.safetensors")
    assert pretrained.keys() == zero_shot.keys() and all((pretrained[k] == zero_shot[k]).all() for k in pretrained)
    chance = load_file(root / "models/chance/merged/open_clip_model.safetensors")
    assert not (chance["text_projection"] == pretrained["text_projection"]).all()
    assert json.loads((root / "metrics/pretrain.json").read_text())["images"] == len(split_ids["train"])


def test_attribute_stages_evaluate_and_fill_the_catalog_gaps(repo):
    root, _ = repo
    metrics = json.loads((root / "metrics/attributes.json").read_text())
    assert set(metrics["attributes"]) == {"category", "subcategory", "article_type", "color", "pattern"}
    assert 0 <= metrics["hierarchy_consistency"] <= 1 and set(metrics["consistency"]) >= {"category>subcategory"}
    confusion = json.loads((root / "reports/attributes/confusion.json").read_text())
    assert len(confusion) == metrics["attributes"]["article_type"]["n"]
    assert json.loads((root / "metrics/train_attributes.json").read_text())["lora_params"] > 0
    assert (root / "models/attributes/adapter/adapter_model.safetensors").exists()
    kept = pd.read_parquet(root / "data/clean/catalog.parquet")
    records = [json.loads(line) for line in (root / "data/attributes/predictions.jsonl").read_text().splitlines()]
    assert [r["product_id"] for r in records] == kept["product_id"].tolist()
    summary = json.loads((root / "metrics/predict_attributes.json").read_text())["attributes"]
    for column in ("color", "article_type"):  # the demo leaves ~8% of each attribute out
        gaps = kept[column].isna()
        assert 0 < gaps.sum() == summary[column]["filled"] + summary[column]["unknown"]
        for record, (_, row) in zip(records, kept.iterrows()):
            value = record["attributes"][column]
            if pd.isna(row[column]):
                assert value["source"] in ("predicted", None) and (value["value"] is None) == (value["source"] is None)
            else:
                assert value == {**value, "value": row[column], "source": "catalog"}


def test_vlm_stages_score_extract_and_match_the_classifier_records(repo):
    root, _ = repo
    metrics = json.loads((root / "metrics/vlm.json").read_text())
    assert metrics["n_rows"] > 0 and metrics["images_per_s"] > 0 and metrics["free"]["n_rows"] > 0
    free = metrics["free"]
    assert free["repaired"] == round((1 - free["valid_json_raw"]) * free["n_rows"])
    assert metrics["valid_json_raw"] == free["valid_json_raw"]
    assert set(metrics["accuracy"]) == set(metrics["zero_shot"]["accuracy"]) == set(metrics["attribute_classifier"])
    vlm = [json.loads(line) for line in (root / "data/vlm/predictions.jsonl").read_text().splitlines()]
    classifier = [json.loads(line) for line in (root / "data/attributes/predictions.jsonl").read_text().splitlines()]
    catalog = pd.read_parquet(root / "data/clean/catalog.parquet")
    attributes = list(metrics["accuracy"])
    gapped = catalog[catalog[attributes].isna().any(axis=1) | (catalog[attributes] == "").any(axis=1)]
    assert [r["product_id"] for r in vlm] == gapped["product_id"].tolist()  # vlm.extract: missing (the gaps only)
    assert 0 < len(vlm) < len(catalog)
    by_id = {r["product_id"]: r for r in classifier}
    for a, b in ((r, by_id[r["product_id"]]) for r in vlm[:20]):
        assert set(a["attributes"]) == set(b["attributes"])
        for name, value in a["attributes"].items():
            assert set(b["attributes"][name]) <= set(value)
            if b["attributes"][name]["source"] == "catalog":
                assert value["value"] == b["attributes"][name]["value"]
    from catalog_search.search import ScenarioSearch

    engine = ScenarioSearch("dual_lora", root, attributes_from="vlm")  # filters can use the VLM's fills
    served = pd.read_parquet(root / "data/serving/dual_lora/items.parquet").set_index("product_id")  # + classifier's
    gaps = sum(v["source"] == "predicted" and pd.isna(served.at[r["product_id"], name]) for r in vlm
               for name, v in r["attributes"].items() if name in served.columns)
    assert engine.filled == gaps > 0 and set(engine.index.items["product_id"]) == set(served.index)


def test_second_repro_is_a_no_op(repo):
    root, _ = repo
    again = run(["dvc", "repro"], root)
    assert stages_run(again.stdout) == {"image_hashes"}, again.stdout  # always runs; the same hashes: nothing after


def test_exp_run_reruns_only_the_changed_scenario(repo):
    root, _ = repo
    before = {s: (root / f"metrics/eval/{s}.json").read_text() for s in SCENARIOS}
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "baseline"], root)
    exp = run(["dvc", "exp", "run", "-S", "train.linear_probe.lr=0.05"], root)
    assert stages_run(exp.stdout) == {"image_hashes", "train@linear_probe", "embed@linear_probe",
                                  "evaluate@linear_probe", "report"}
    after = {s: (root / f"metrics/eval/{s}.json").read_text() for s in SCENARIOS}
    assert after["linear_probe"] != before["linear_probe"]
    assert after["dual_lora"] == before["dual_lora"] and after["zero_shot"] == before["zero_shot"]
    diff = run(["dvc", "metrics", "diff", "--json"], root)
    assert "metrics/eval/linear_probe.json" in json.loads(diff.stdout)


def test_search_command_uses_the_whole_catalog_serving_index(repo):
    root, _ = repo
    clean = pd.read_parquet(root / "data/clean/catalog.parquet")
    served = pd.read_parquet(root / "data/serving/dual_lora/items.parquet")
    assert sorted(served["product_id"]) == sorted(clean["product_id"])  # every split, not just test
    info = json.loads((root / "data/serving/dual_lora/info.json").read_text())
    assert info["embedded"] == info["products"] == len(clean) and info["reused"] == 0
    out = run(["catalog-search", "search", "red dress", "--scenario", "dual_lora", "-k", "40", "--json"], root)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    test_ids = set(pd.read_parquet(root / "data/embeddings/dual_lora/items.parquet")["product_id"])
    assert len(rows) == 40 and {r["product_id"] for r in rows} - test_ids  # train/val products are found too
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    missing = run(["catalog-search", "search", "red dress", "--scenario", "linear_probe"], root, check=False)
    assert missing.returncode != 0 and "add linear_probe to serve.scenarios" in missing.stderr
    text = run(["catalog-search", "search", "red dress", "--text-embedder", "-k", "3", "--json"], root)
    assert len(text.stdout.splitlines()) == 3 and json.loads(text.stdout.splitlines()[0])["description"]


def test_search_filters_image_queries_and_model_mismatch(repo):
    root, _ = repo
    items = pd.read_parquet(root / "data/serving/dual_lora/items.parquet")
    color = items["color"].value_counts().index[0]
    out = run(["catalog-search", "search", "shoes", "--scenario", "dual_lora", "-k", "50", "--json",
               "--where", f"color={color.upper()}"], root)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    wanted = set(items.loc[items["color"] == color, "product_id"])
    assert len(rows) == min(50, len(wanted)) and {r["product_id"] for r in rows} <= wanted  # k when k exist
    image = root / "data/clean" / pd.read_parquet(root / "data/clean/catalog.parquet")["image_path"].iloc[0]
    out = run(["catalog-search", "search", "--image", str(image), "--scenario", "dual_lora", "-k", "3", "--json"], root)
    assert len(out.stdout.splitlines()) == 3
    info = root / "data/serving/dual_lora/info.json"
    original = info.read_text()
    try:
        info.write_text(original.replace('"model_fingerprint": "', '"model_fingerprint": "0'))
        stale = run(["catalog-search", "search", "shoes", "--scenario", "dual_lora"], root, check=False)
        assert stale.returncode != 0 and "serve_index@dual_lora" in stale.stderr
    finally:
        info.write_text(original)


def test_arena_typed_query_uses_both_trained_models(repo, tmp_path):
    import httpx

    from catalog_search.config import load_config
    from catalog_search.serving.app import create_app
    from conftest import serving

    root, _ = repo
    cfg = load_config(root / "params.yaml").serve
    cfg.arena.k = 5
    app = create_app(root, cfg, arena=("zero_shot", "dual_lora"), votes=tmp_path / "votes.sqlite")
    with serving(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        r = client.get("/arena/api/round", params={"kind": "text", "q": "red dress"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"] == {"kind": "text", "text": "red dress"}
        assert len(body["rows"]["A"]) == len(body["rows"]["B"]) == 5
        vote = client.post("/arena/api/vote", json={"round_id": body["round_id"], "choice": "B"})
        assert vote.status_code == 200 and vote.json()["votes"] == 1
        hits = client.get("/api/search", params={"q": "red dress", "k": 3}).json()["results"]  # the same server searches
        assert len(hits) == 3 and client.get(hits[0]["image_url"]).status_code == 200
    report = run(["catalog-search", "arena-report", "--db", str(tmp_path / "votes.sqlite"),
                  "--out", str(tmp_path / "arena.json")], root)
    assert "1 votes" in report.stdout
    stats = json.loads((tmp_path / "arena.json").read_text())["pairs"]["dual_lora vs zero_shot"]
    assert stats["decided"] == 1 and stats["dual_lora"]["wins"] + stats["zero_shot"]["wins"] == 1


def test_fashion_product_source_through_ingest_clean_shard(tmp_path):
    """Another source on the real graph: bad rows set aside with reasons, the rest sharded."""
    from test_cleaning import pattern

    data = tmp_path / "hf"
    data.mkdir()
    images = []
    for i in range(30):
        buffer = io.BytesIO()
        pattern(100 + i).save(buffer, "JPEG", quality=90)
        images.append({"bytes": buffer.getvalue(), "path": f"{i}.jpg"})
    images[3] = {"bytes": images[3]["bytes"][:200], "path": "3.jpg"}  # truncated download
    images[4] = None  # no image
    ids = list(range(1000, 1030))
    ids[7] = ids[6]  # a duplicated id
    types = ["Shirts", "Jeans", "Watches"]
    pd.DataFrame({
        "id": ids, "gender": ["Men", "Women"] * 15, "masterCategory": ["Apparel"] * 30,
        "subCategory": ["Topwear"] * 30, "articleType": [types[i % 3] for i in range(30)],
        "baseColour": ["Navy Blue"] * 30, "season": ["Fall"] * 30, "year": [2012] * 30, "usage": ["Casual"] * 30,
        "productDisplayName": [f"Brand Men Navy {types[i % 3]} {i}" for i in range(30)], "image": images,
    }).to_parquet(data / "train-00000-of-00001.parquet")
    params = default_params()
    params["data"].update(source="fashion_product", path=str(data))
    params["shard"].update(mini_train_size=4, samples_per_shard=10)
    root = project(tmp_path / "project", params)
    log = run(["dvc", "repro", "shard"], root).stdout
    assert stages_run(log) == {"ingest", "image_hashes", "clean", "shard"}
    metrics = json.loads((root / "metrics/clean.json").read_text())
    assert metrics["rows_in"] == 30 and metrics["rows_kept"] == 27
    assert metrics["rejected_by_reason"] == {"duplicate_product_id": 1, "missing_image": 1, "truncated_image": 1}
    rejected = pd.read_parquet(root / "data/clean/rejected.parquet")
    assert rejected["message"].str.contains("train-00000-of-00001.parquet row").all()
    kept = pd.read_parquet(root / "data/clean/catalog.parquet")
    assert "men shirts in navy blue" in kept["captions"].iloc[0]  # the attribute template
    manifest = json.loads((root / "data/shards/manifest.json").read_text())
    assert sum(manifest["splits"][s]["samples"] for s in ("train", "val", "test")) == 27


def test_attributes_command_reads_images_to_json(repo, monkeypatch, capsys):
    from catalog_search.cli import main

    root, _ = repo
    monkeypatch.chdir(root)
    kept = pd.read_parquet(root / "data/clean/catalog.parquet")
    images = [str(root / "data/clean" / p) for p in kept["image_path"].iloc[:2]]
    main(["attributes", *images])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == images
    heads = {"category", "subcategory", "article_type", "color", "pattern"}
    assert all(set(r["attributes"]) == heads and 0 < r["attributes"]["color"]["confidence"] <= 1 for r in rows)
    (root / "notes.txt").write_text("not a picture")
    with pytest.raises(SystemExit, match="notes.txt: not a readable image"):
        main(["attributes", str(root / "notes.txt")])
