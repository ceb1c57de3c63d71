"""train_attributes: the hierarchical attribute classifier on the train split -> models/attributes/."""
from pathlib import Path

from catalog_search.config import start

SHARDS = Path("data/shards")
SAVED = ("backbone", "image_size", "heads", "hierarchy", "head_hidden", "head_dropout", "mode", "lora")

if __name__ == "__main__":
    params = start().model_dump()

    from dvclive import Live

    from catalog_search.attributes.model import save_classifier
    from catalog_search.attributes.train import train_classifier
    from catalog_search.core.data import load_split
    from catalog_search.core.device import pick_device
    from catalog_search.io import write_json

    p = params["attributes"]
    with Live("dvclive/attributes", dvcyaml=None, save_dvc_exp=False) as live:
        model, wrapper, labels, record = train_classifier(p, load_split(SHARDS, "train"), load_split(SHARDS, "val"),
                                                          pick_device(), live)
    save_classifier(Path("models/attributes"), model, wrapper, labels, {k: p[k] for k in SAVED})
    write_json("metrics/train_attributes.json", {k: v for k, v in record.items() if k != "epochs"})
    last = record["epochs"][-1] if record["epochs"] else {}
    print(f"train_attributes: {record['trainable_params']} trainable of {record['backbone_params']} backbone params, "
          f"{record['steps']} steps in {record['train_seconds']} s; last epoch {last}")
