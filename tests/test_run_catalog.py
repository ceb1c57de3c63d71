"""run-catalog and run-recipes for real: a clone of a committed project, a dvc exp per grid point or
recipe, seeds, results/."""
import json

import yaml

from test_pipeline import default_params, project, run


def test_run_catalog_sweeps_on_val_adds_seeds_and_resumes(tmp_path):
    params = default_params()
    params["data"]["demo"].update(n_products=160, image_size=32)
    params["shard"].update(mini_train_size=16, samples_per_shard=50)
    params["model"] = {"name": "tiny", "pretrained": "models/pretrained/merged/open_clip_model.safetensors",
                       "image_size": 32}
    params["pretrain"].update(base="none", caption_size=32, train={"epochs": 1, "lr": 0.003, "batch_size": 32})
    params["train"]["scenarios"] = ["chance", "zero_shot", "linear_probe"]
    params["serve"]["scenarios"] = ["linear_probe"]  # serve only what is trained (validated)
    params["wise_ft"].update(scenarios=["linear_probe"], alphas=[0.0, 1.0])
    params["train"]["defaults"].update(batch_size=32)
    params["attributes"].update(image_size=32, epochs=1, batch_size=32, head_hidden=32, min_count=2,
                                lora={"r": 4, "alpha": 8, "dropout": 0.05, "last_blocks": 1})
    params["vlm"].update(language="tiny", image_size=32, train_rows=32, epochs=1, batch_size=16, min_count=2,
                         zero_shot_rows=4, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    root = project(tmp_path / "project", params)
    (root / ".gitignore").write_text(".runs/\n")
    (root / "runs").mkdir()
    (root / "runs/tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "results": "results/tiny", "set": {"data.demo.seed": 3},
        "sweep": {"lr": [0.0001, 0.01], "epochs": 2, "metric": "val_text_to_image_R@10"},
        "seeds": [1], "seed_scenarios": 1, "target": "report",
        "recipes": {"scenario": "linear_probe", "lr": 0.01, "seeds": [0],
                    "variants": {"levers": {"positives": "caption", "hard_negatives.share": 0.5}, "plain": {}},
                    "wise_ft": ["plain"], "results": "results/tiny/recipes.json"},
        "attributes": {"set": {"vlm.attributes": ["category", "color"], "attributes.heads": {"category": [], "color": []},
                               "attributes.confusion": "color", "vlm.free_rows": 8},
                       "results": "results/tiny/attributes.json"}}))
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project"], root)

    out = run(["catalog-search", "run-catalog", "runs/tiny.yaml"], root)
    assert out.stdout.count("dvc exp run") == 3  # two grid points, one seed
    summary = json.loads((root / "results/tiny/summary.json").read_text())
    val = summary["tuning"]["val"]
    best = max(("0.0001", "0.01"), key=lambda lr: val[lr]["linear_probe"])
    assert summary["tuning"]["chosen_lr"]["linear_probe"] == float(best)
    chosen = yaml.safe_load((root / "results/tiny/params.yaml").read_text())
    assert chosen["train"]["linear_probe"] == {"epochs": 2, "lr": float(best)} and chosen["data"]["demo"]["seed"] == 3
    # the report is of the chosen point: its test numbers are the stashed ones of that lr
    stashed = json.loads((root / f".runs/tiny.stash/lr{float(best):g}/metrics/eval/linear_probe.json").read_text())
    assert summary["scenarios"]["linear_probe"]["title_to_image_R@10"] == stashed["title_to_image_R@10"]
    spread = summary["seed_spread"]["linear_probe"]["title_to_image_R@10"]
    assert set(spread["seeds"]) == {"0", "1"} and spread["std"] >= 0
    assert spread["seeds"]["0"] == stashed["title_to_image_R@10"]
    assert "linear_probe vs zero_shot" in summary["comparisons"] and summary["run"]["wall_seconds"] > 0
    md = (root / "results/tiny/summary.md").read_text()
    assert "## Tuning budget" in md and "## Seed-to-seed spread" in md
    assert (root / "results/tiny/top5.png").stat().st_size > 1000
    assert not (root / "data").exists()  # the project's own workspace is untouched: all of it ran in .runs/tiny

    again = run(["catalog-search", "run-catalog", "runs/tiny.yaml"], root)  # finished points are not re-run
    assert "dvc exp run" not in again.stdout

    # the recipes in the same clone: one dvc exp per (variant, seed), every lever key set in every run
    out = run(["catalog-search", "run-recipes", "runs/tiny.yaml"], root)
    assert out.stdout.count("dvc exp run") == 2 and "hard_negatives.share=0.0" in out.stdout
    recipes = json.loads((root / "results/tiny/recipes.json").read_text())
    plain, levers = recipes["variants"]["plain"], recipes["variants"]["levers"]
    stash = root / ".runs/tiny.recipes"
    assert plain["test"]["title_to_image_R@10"]["seeds"] == [
        json.loads((stash / "plain-seed0/metrics/eval/linear_probe.json").read_text())["title_to_image_R@10"]]
    d = levers["vs_plain"]["title_to_image_R@10"]
    assert d["ci95"][0] <= d["diff"] <= d["ci95"][1] and 0 < d["p"] <= 1 and "vs_plain" not in plain
    losses = [json.loads((stash / f"{v}-seed0/metrics/train/linear_probe.json").read_text())["final_loss"]
              for v in ("plain", "levers")]
    assert losses[0] != losses[1]  # the levers changed the training
    curve = recipes["wise_ft"]["plain"]["curve"]
    assert [c["alpha"] for c in curve] == [0.0, 1.0] and "levers" not in recipes["wise_ft"]
    assert "dvc exp run" not in run(["catalog-search", "run-recipes", "runs/tiny.yaml"], root).stdout  # resumes

    # the attribute classifier and the VLM side by side, in the same clone, on the same test rows
    out = run(["catalog-search", "run-attributes", "runs/tiny.yaml"], root)
    assert out.stdout.count("dvc exp run") == 1
    result = json.loads((root / "results/tiny/attributes.json").read_text())
    vlm = json.loads((root / ".runs/tiny/metrics/vlm.json").read_text())
    assert set(result["accuracy"]) == {"category", "color"} and result["test_rows"] == vlm["n_rows"]
    assert result["accuracy"]["color"] == {"classifier": vlm["attribute_classifier"]["color"],
                                           "vlm": vlm["accuracy"]["color"], "vlm_free": vlm["free"]["accuracy"]["color"],
                                           "vlm_untuned": vlm["zero_shot"]["accuracy"]["color"]}
    assert vlm["free"]["n_rows"] == 8 and result["vlm"]["valid_json_raw"] == vlm["free"]["valid_json_raw"]
    assert "| color |" in (root / "results/tiny/attributes.md").read_text()
