"""train@<scenario>: fine-tune one scenario -> models/<scenario>/, metrics/train/<scenario>.json, dvclive/<scenario>/."""
import sys
from pathlib import Path

import torch
from dvclive import Live

from catalog_search.checks import validate
from catalog_search.io import write_json
from catalog_search.models.encode import pick_device
from catalog_search.models.export import save_model
from catalog_search.models.lora import apply_scenario, trainable_summary
from catalog_search.models.registry import create_model
from catalog_search.models.scenarios import get_scenario, scenario_config
from catalog_search.params import load_params
from catalog_search.training.data import load_split
from catalog_search.training.trainer import train

SHARDS = Path("data/shards")

if __name__ == "__main__":
    name = sys.argv[1]
    params = load_params()
    validate(params)
    scenario, cfg, m = get_scenario(name), scenario_config(params["train"], name), params["model"]
    torch.manual_seed(cfg["seed"])  # the projections' initialisation, zero_shot included
    device = pick_device()
    bundle = create_model(m["name"], m["pretrained"], image_size=m["image_size"], loss=cfg["loss"], device=device)
    wrapper = apply_scenario(bundle.model, scenario, cfg["lora"])
    sizes = trainable_summary(bundle.model)
    with Live(f"dvclive/{name}", dvcyaml=None, save_dvc_exp=False) as live:
        result = train(bundle, scenario, load_split(SHARDS, cfg["train_split"]), load_split(SHARDS, "val"),
                       cfg, device, live)
    card = {"scenario": name, "model": m, "towers": {"image": scenario.image, "text": scenario.text,
            "projections": "trained" if scenario.projections else "frozen"}, "train": cfg, **sizes,
            **{k: v for k, v in result.items() if k != "val"}, "val_metrics": result["val"], "device": str(device)}
    save_model(Path("models") / name, bundle, wrapper, card)
    write_json(f"metrics/train/{name}.json", {**sizes, "train_seconds": result["train_seconds"],
               "steps": result["steps"], **({"final_loss": result["final_loss"]} if "final_loss" in result else {}),
               **{f"val_{k}": v for k, v in result["val"].items() if k.endswith(("R@10", "mrr"))}})
    print(f"train@{name}: {sizes['trainable_params']} trainable params, {result['steps']} steps, "
          f"{result['train_seconds']} s; val t2i R@10 {result['val']['text_to_image_R@10']}")
