"""train_vlm: the attribute VLM (frozen backbone -> trained projector -> language model + LoRA) on
the train split -> models/vlm/, metrics/train_vlm.json."""
from pathlib import Path

from catalog_search.config import start

SAVED = ("language", "layers", "backbone", "image_size", "prompt", "seed")

if __name__ == "__main__":
    params = start().model_dump()

    from dvclive import Live

    from catalog_search.core.data import load_split
    from catalog_search.core.device import pick_device
    from catalog_search.core.labels import LabelSet
    from catalog_search.io import write_json
    from catalog_search.vlm.build import build, save_vlm
    from catalog_search.vlm.language import cache_dir
    from catalog_search.vlm.train import fit, image_inputs

    p, device = params["vlm"], pick_device()
    rows = load_split(Path("data/shards"), "train")
    labels = LabelSet.fit(rows, {a: [] for a in p["attributes"]}, p["min_count"], "none")
    features = image_inputs(p, [r["image"] for r in rows], p["extract_batch"], device)
    model, template, _ = build(p, labels, features.shape[1], cache_dir(p["cache_dir"]))
    with Live("dvclive/vlm", dvcyaml=None, save_dvc_exp=False) as live:
        record = fit(model, template, labels, rows, features, p, device, live)
    save_vlm(Path("models/vlm"), model, labels, {**{k: p[k] for k in SAVED}, "feature_dim": features.shape[1]})
    write_json("metrics/train_vlm.json", {k: v for k, v in record.items() if k != "epochs"})
    print(f"train_vlm: {record['trainable_params']} trainable of {record['base_params'] + record['lora_params']} params; "
          f"{record.get('align_steps', 0)} align and {record['tune_steps']} tune steps in {record['train_seconds']} s; "
          f"epochs {record['epochs']}")
