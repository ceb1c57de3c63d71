import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from catalog_search.core.data import load_split
from catalog_search.core.packaged import minilm_path
from catalog_search.text_embedder import load_model, retrieval_task, training_pairs
from catalog_search.text_embedder.train import evaluate, save, train
from conftest import ROOT

CFG = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["query", "value"]}, "temperature": 0.05, "epochs": 1,
       "batch_size": 8, "lr": 1e-3, "warmup_fraction": 0.05, "grad_clip": 1.0, "weight_decay": 0.0, "log_every": 5,
       "precision": "auto"}


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, random weights: built locally, no download."""
    path = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
              add_pooling_layer=False).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path)


def test_pairs_and_multi_positive_relevance():
    samples = [{"product_id": "a", "query": "red dress", "title": "Red Dress", "description": "A red dress."},
               {"product_id": "b", "query": "red dress", "title": "Red Dress", "description": "Another red dress."},
               {"product_id": "c", "query": "blue coat", "title": "Blue Coat", "description": ""}]
    anchors, positives = training_pairs(samples)
    assert anchors == ["red dress", "Red Dress", "red dress", "Red Dress"] and positives[0] == "A red dress."
    queries, corpus, relevant = retrieval_task(samples)
    assert list(queries.values()) == ["red dress"] and relevant["q0"] == {"a", "b"} and set(corpus) == {"a", "b"}
    with pytest.raises(ValueError, match="descriptions"):
        training_pairs([{"product_id": "x", "query": "q", "description": ""}])


def test_adapter_loads_with_plain_peft_and_matches_training_embeddings(tiny_bert, demo_shards, tmp_path):
    shards, _ = demo_shards
    model = load_model(tiny_bert, max_length=64, device="cpu")
    before = model.encode(["red striped dress"], convert_to_tensor=True)
    stats = train(model, load_split(shards, "train"), {**CFG, "precision": "fp32"}, seed=0)  # compared to 1e-5
    assert stats["steps"] > 0 and 0 < stats["trainable_fraction"] < 0.1
    save(model, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    texts = ["red striped dress", "A navy coat with a checked pattern. Part of our Outerwear range."]
    expected = model.encode(texts, convert_to_tensor=True)
    assert not torch.allclose(expected[0], before[0])  # the adapter changed the embeddings

    # exactly what a user does: base + adapter through peft, then mean pooling and L2 normalisation
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_bert), str(tmp_path / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "adapter"))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = peft_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(pooled, expected.cpu(), atol=1e-5, rtol=1e-4)

    reloaded = load_model(tiny_bert, tmp_path / "adapter", max_length=64, device="cpu")
    torch.testing.assert_close(reloaded.encode(texts, convert_to_tensor=True), expected, atol=1e-5, rtol=1e-4)
    metrics = evaluate(reloaded, load_split(shards, "test"))
    assert set(metrics) >= {"R@1", "R@5", "R@10", "MRR@10", "nDCG@10"} and 0 <= metrics["MRR@10"] <= 1


def test_search_command_ranks_descriptions(tiny_bert, demo_shards, tmp_path, monkeypatch, capsys):
    import json

    import yaml

    from catalog_search import catalog
    from catalog_search.cli import main

    shards, kept = demo_shards
    model = load_model(tiny_bert, max_length=64, device="cpu")
    train(model, load_split(shards, "train"), CFG, seed=0)
    save(model, tmp_path / "models" / "text_embedder")
    catalog.save(kept, tmp_path / "data" / "clean" / "catalog.parquet")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())  # the CLI validates all of it first
    params["text_embedder"].update(base=tiny_bert, max_length=64)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    from catalog_search.serving.catalog_index import build_text_index, folder_fingerprint

    built = build_text_index(Path("data/clean/catalog.parquet"),  # what serve_text_index does: embed once
                             lambda texts: model.encode(texts, convert_to_numpy=True),
                             f"{tiny_bert}+{folder_fingerprint(Path('models/text_embedder'))}",
                             Path("data/serving/text_embedder"), Path("data/serving_cache/text_embedder"), 32, {})
    assert built["products"] == (kept["description"].fillna("").str.strip() != "").sum() >= built["embedded"] > 0
    target = kept["description"].iloc[7]
    capsys.readouterr()  # drop the trainer's log lines
    main(["search", target, "--text-embedder", "-k", "3", "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["description"] == target and rows[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
