"""train@<scenario>: fine-tune one scenario -> models/<scenario>/, metrics/train/<scenario>.json, dvclive/<scenario>/.

Resumes from checkpoints/<scenario>/ after a kill. With train.<scenario>.nproc > 1 it relaunches
itself under torchrun; run by torchrun directly, it joins the process group it describes.
"""
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from catalog_search.config import start


if __name__ == "__main__":
    name = sys.argv[1]
    params = start()

    import torch
    from dvclive import Live

    from catalog_search.core.adapters import trainable_summary
    from catalog_search.core.data import load_split
    from catalog_search.core.device import pick_device
    from catalog_search.io import write_json
    from catalog_search.models.export import save_model
    from catalog_search.models.lora import apply_scenario
    from catalog_search.models.registry import create_model
    from catalog_search.models.scenarios import get_scenario
    from catalog_search.training import checkpoint, distributed
    from catalog_search.training.trainer import train

    scenario, cfg, m = get_scenario(name), params.train.scenario(name).model_dump(), params.model.model_dump()
    if cfg["nproc"] > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(distributed.launch(cfg["nproc"], sys.argv))
    device = pick_device()
    world = distributed.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    torch.manual_seed(cfg["seed"])  # the projections' initialisation, zero_shot included: same on every rank
    start_from = params.pretrain.base if scenario.start == "base" else m["pretrained"]
    bundle = create_model(m["name"], start_from, image_size=m["image_size"], loss=cfg["loss"], device=device)
    wrapper = apply_scenario(bundle.model, scenario, cfg["lora"])
    sizes = trainable_summary(bundle.model)
    checkpoints = Path("checkpoints") / name
    checkpoints.mkdir(parents=True, exist_ok=True)  # an output even where nothing trains (zero_shot)
    live = Live(f"dvclive/{name}", dvcyaml=None, save_dvc_exp=False) if world.is_main else nullcontext()
    with live:
        shards = params.shard.read_from  # data/shards, or where push-shards put them (s3://...)
        result = train(bundle, scenario, load_split(shards, cfg["train_split"]), load_split(shards, "val"),
                       cfg, device, live if world.is_main else None, world, checkpoints)
    if world.is_main:
        card = {"scenario": name, "model": {**m, "pretrained": start_from}, "towers": {"image": scenario.image, "text": scenario.text,
                "projections": "trained" if scenario.projections else "frozen"}, "train": cfg, **sizes,
                **{k: v for k, v in result.items() if k != "val"}, "val_metrics": result["val"],
                "device": str(device), "processes": world.size}
        save_model(Path("models") / name, bundle, wrapper, card)
        keep = ("train_seconds", "steps", "best_step", "final_loss", "samples_per_second")
        write_json(f"metrics/train/{name}.json", {**sizes, "epochs_given": cfg["epochs"], "lr": cfg["lr"],
                   **{k: result[k] for k in keep if k in result},
                   **{f"val_{k}": v for k, v in result["val"].items() if k.endswith(("R@10", "mrr"))}})
        print(f"train@{name}: {sizes['trainable_params']} trainable params, {result['steps']} steps, "
              f"{result['train_seconds']} s; val t2i R@10 {result['val']['text_to_image_R@10']}")
        checkpoint.clear(checkpoints)  # finished: the next run of this stage (new code, -f) trains afresh
    distributed.shutdown()
