"""evaluate_vlm: on the test split, the tuned VLM's per-attribute accuracy decoding under the
template (the extraction path) with its images/s from image bytes to answer; free generation's JSON
validity before repair and its accuracy (`free`, the float model); the untuned model (base language model, untrained
projector: `zero_shot`) and the attribute classifier side by side -> metrics/vlm.json."""
from pathlib import Path

from catalog_search.config import start

if __name__ == "__main__":
    p = start().vlm.model_dump()

    from catalog_search.core.data import load_split
    from catalog_search.core.device import pick_device
    from catalog_search.io import read_json, write_json
    from catalog_search.vlm.build import build, load_vlm
    from catalog_search.vlm.extract import extract, extract_images, vlm_metrics
    from catalog_search.vlm.language import cache_dir
    from catalog_search.vlm.train import image_inputs

    device = pick_device()
    model, template, labels, settings, tokenizer = load_vlm(Path("models/vlm"), cache_dir(p["cache_dir"]))
    test = load_split(Path("data/shards"), "test")
    images = [r["image"] for r in test]
    answers, _, images_per_s = extract_images(settings, model, template, tokenizer, images, p["extract_batch"], device,
                                              quantize=p["quantize"])
    metrics = {**vlm_metrics(labels, test, answers), "images_per_s": round(images_per_s, 2)}
    free = test[:p["free_rows"]]
    answers, repaired, free_per_s = extract_images(settings, model, template, tokenizer, images[:len(free)],
                                                   p["extract_batch"], device, free=True)
    metrics["free"] = {**vlm_metrics(labels, free, answers, repaired), "images_per_s": round(free_per_s, 2)}
    metrics["valid_json_raw"] = metrics["free"]["valid_json_raw"]
    n = p["zero_shot_rows"]
    features = image_inputs(settings, images[:n], p["extract_batch"], device)
    untuned, template, tokenizer = build(p, labels, features.shape[1], cache_dir(p["cache_dir"]), tune=False)
    answers, _ = extract(untuned, template, tokenizer, features, p["extract_batch"], device)
    _, repaired = extract(untuned, template, tokenizer, features, p["extract_batch"], device, free=True)
    metrics["zero_shot"] = {**vlm_metrics(labels, test[:n], answers),
                            "valid_json_raw": round(1 - sum(repaired) / max(len(repaired), 1), 4)}
    classifier = read_json("metrics/attributes.json")["attributes"]
    metrics["attribute_classifier"] = {a: classifier[a]["accuracy"] for a in labels.labels if a in classifier}
    write_json("metrics/vlm.json", metrics)
    print(f"evaluate_vlm: accuracy {metrics['accuracy']} at {metrics['images_per_s']} images/s; free generation: "
          f"valid JSON {metrics['valid_json_raw']} raw; zero-shot {metrics['zero_shot']['accuracy']}, classifier "
          f"{metrics['attribute_classifier']}")
