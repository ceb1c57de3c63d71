"""evaluate_vlm: on the test split, the tuned VLM's JSON validity (before and after repair) and
per-attribute accuracy, the untuned model's (base language model, untrained projector, prompted
zero-shot) and the attribute classifier's, side by side; extraction throughput -> metrics/vlm.json."""
from pathlib import Path

from catalog_search.io import read_json, write_json
from catalog_search.models.encode import pick_device
from catalog_search.params import load_params
from catalog_search.training.data import load_split
from catalog_search.vlm.extract import extract, vlm_metrics
from catalog_search.vlm.language import cache_dir
from catalog_search.vlm.model import load_vlm
from catalog_search.vlm.train import build, image_inputs

if __name__ == "__main__":
    p, device = load_params()["vlm"], pick_device()
    model, template, labels, settings, tokenizer = load_vlm(Path("models/vlm"), cache_dir(p["cache_dir"]))
    test = load_split(Path("data/shards"), "test")
    features = image_inputs(settings, [r["image"] for r in test], p["extract_batch"], device)
    answers, repaired, images_per_s = extract(model, template, tokenizer, features, p["extract_batch"], device)
    metrics = {**vlm_metrics(labels, test, answers, repaired), "images_per_s": round(images_per_s, 2)}
    n = p["zero_shot_rows"]
    untuned, template, tokenizer = build(p, labels, features.shape[1], cache_dir(p["cache_dir"]), tune=False)
    answers, repaired, _ = extract(untuned, template, tokenizer, features[:n], p["extract_batch"], device)
    metrics["zero_shot"] = vlm_metrics(labels, test[:n], answers, repaired)
    classifier = read_json("metrics/attributes.json")["attributes"]
    metrics["attribute_classifier"] = {a: classifier[a]["accuracy"] for a in labels.labels if a in classifier}
    write_json("metrics/vlm.json", metrics)
    print(f"evaluate_vlm: valid JSON {metrics['valid_json_raw']} raw, {metrics['repaired']} repaired; accuracy "
          f"{metrics['accuracy']} (zero-shot {metrics['zero_shot']['accuracy']}, classifier "
          f"{metrics['attribute_classifier']}); {metrics['images_per_s']} images/s")
