"""train_text: LoRA-tune the text embedder on train-split (query|title -> description) pairs -> models/text_embedder/."""
from pathlib import Path

from catalog_search.config import start

if __name__ == "__main__":
    p = start().text_embedder.model_dump()

    from dvclive import Live

    from catalog_search.core.data import load_split
    from catalog_search.io import write_json
    from catalog_search.text_embedder import load_model
    from catalog_search.text_embedder.train import save, train

    model = load_model(p["base"], max_length=p["max_length"])
    with Live("dvclive/text_embedder", dvcyaml=None, save_dvc_exp=False) as live:
        result = train(model, load_split(Path("data/shards"), "train"), p, seed=p["seed"], live=live)
    save(model, Path("models/text_embedder"))
    write_json("metrics/train_text.json", result)
    print(f"train_text: {result}")
