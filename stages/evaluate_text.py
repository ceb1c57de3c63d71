"""evaluate_text: base (pretrained, zero-shot) vs tuned text embedder on the test split -> metrics/text_embedder.json."""
from pathlib import Path

from catalog_search.config import start

if __name__ == "__main__":
    p = start().text_embedder.model_dump()

    from catalog_search.core.data import load_split
    from catalog_search.io import write_json
    from catalog_search.text_embedder import load_model
    from catalog_search.text_embedder.train import evaluate

    test = load_split(Path("data/shards"), "test")
    base = evaluate(load_model(p["base"], max_length=p["max_length"]), test)
    tuned = evaluate(load_model(p["base"], "models/text_embedder", max_length=p["max_length"]), test)
    gain = {k: round(tuned[k] - base[k], 4) for k in base if not k.startswith("n_")}
    write_json("metrics/text_embedder.json", {"base": base, "tuned": tuned, "gain": gain})
    print(f"evaluate_text: base MRR@10 {base['MRR@10']}, tuned {tuned['MRR@10']} (gain {gain['MRR@10']:+})")
