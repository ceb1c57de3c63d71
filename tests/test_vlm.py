"""The attribute VLM on a tiny random language model of the real architecture (Llama, SmolLM2's
tokenizer): the JSON template, training, save/load, and extraction that is always valid JSON."""
from __future__ import annotations

import json

import pytest
import torch

from catalog_search.core.labels import LabelSet
from catalog_search.vlm.build import build, load_vlm, save_vlm
from catalog_search.vlm.decode import decode_constrained
from catalog_search.vlm.extract import catalog_records, extract, needs_extraction, vlm_metrics
from catalog_search.vlm.language import cache_dir, load_tokenizer
from catalog_search.vlm.model import quantized
from catalog_search.vlm.template import IGNORE, JsonTemplate
from catalog_search.vlm.train import fit, image_inputs

ATTRS = ["category", "color", "pattern"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> dict:
    return dict(language="tiny", layers=None, backbone="packaged:efficientnet-lite0", image_size=32, seed=0,
                train_rows=None, prompt="Attributes as JSON:", lora=dict(r=4, alpha=8, dropout=0.0), align_epochs=1,
                align_lr=0.01, lr=0.01, weight_decay=0.0, epochs=4, batch_size=16, warmup_fraction=0.1, grad_clip=1.0, precision="auto",
                cache_dir=None)


@pytest.fixture(scope="module")
def trained(demo_shards, cfg):
    _, rows = demo_shards
    rows = rows.to_dict("records")[:48]
    labels = LabelSet.fit(rows, {a: [] for a in ATTRS}, 2, "none")
    images = [r["image"] for r in _images(demo_shards, rows)]
    features = image_inputs(cfg, images, 64, torch.device("cpu"))
    model, template, tokenizer = build(cfg, labels, features.shape[1], cache_dir(cfg["cache_dir"]))
    record = fit(model, template, labels, rows, features, cfg, torch.device("cpu"))
    return model, template, tokenizer, labels, rows, features, record


def _images(demo_shards, rows):
    from catalog_search.core.data import load_split

    shards, _ = demo_shards
    by_id = {r["product_id"]: r for split in ("train", "val", "test") for r in load_split(shards, split)}
    return [by_id[r["product_id"]] for r in rows]


def test_template_round_trips_masks_unknowns_and_rejects_other_json():
    tokenizer = load_tokenizer("tiny", cache_dir(None))
    template = JsonTemplate(tokenizer, {"color": ["Red", "Navy"], "pattern": ["solid", "polka dot"]})
    ids, labels = template.target({"color": "Navy", "pattern": None})
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert json.loads(text) == {"color": "Navy", "pattern": "solid"}  # an unknown takes the first class's place...
    masked = [i for i, lab in zip(ids, labels) if lab == IGNORE]
    assert tokenizer.decode(masked) == "solid"  # ...and is left out of the loss
    assert template.parse(text)[0] == {"color": "Navy", "pattern": "solid"}
    assert template.parse('{"color": "Blue", "pattern": "solid"}')[1] == "literal_error"
    assert template.parse('{"color": "Red"}')[1] == "missing"
    assert template.parse('{"color": "Red", "pattern": "sol')[1] == "json_invalid"


def test_training_lowers_the_loss_and_only_projector_and_lora_learn(trained):
    model, *_, record = trained
    assert [e["phase"] for e in record["epochs"]] == ["align"] + ["tune"] * 4
    losses = [e["loss"] for e in record["epochs"] if e["phase"] == "tune"]  # the answer's loss (align: the tags')
    assert losses[-1] < losses[0] and record["final_loss"] == losses[-1]
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("trunk.", "heads.")) or "lora_" in n for n in names)
    assert record["trainable_params"] < (record["base_params"] + record["lora_params"]) / 5


def test_the_alignment_phase_moves_the_projector_only(demo_shards, cfg):
    """Phase 1 (alignment): the tag heads learn, the adapters stay at their start; phase 2 moves the
    adapters and leaves the projector as phase 1 left it."""
    _, rows = demo_shards
    rows = rows.to_dict("records")[:16]
    labels = LabelSet.fit(rows, {a: [] for a in ATTRS}, 2, "none")
    features = torch.randn(len(rows), 8)
    model, template, _ = build(cfg, labels, 8, cache_dir(None))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fit(model, template, labels, rows, features, {**cfg, "epochs": 0}, torch.device("cpu"))
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert moved and all(n.startswith(("trunk.", "heads.")) for n in moved)
    aligned = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fit(model, template, labels, rows, features, {**cfg, "align_epochs": 0, "epochs": 1}, torch.device("cpu"))
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, aligned[n])}
    assert moved and all("lora_" in n for n in moved)


def test_extraction_is_always_valid_and_repairs_are_counted(trained):
    model, template, tokenizer, labels, rows, features, _ = trained
    answers, repaired = extract(model, template, tokenizer, features[:12], 8, torch.device("cpu"), free=True)
    assert len(answers) == 12
    for answer in answers:
        assert template.parse(template.dumps(answer))[0] == answer  # every answer is JSON of the schema
    metrics = vlm_metrics(labels, rows[:12], answers, repaired)
    assert metrics["repaired"] == sum(repaired) and metrics["valid_json_raw"] == round(1 - sum(repaired) / 12, 4)
    texts = model.generate_text(features[:12], tokenizer, template.max_tokens + 4)
    for text, answer, fixed in zip(texts, answers, repaired):  # a valid free answer is kept as written
        assert fixed or template.parse(text)[0] == answer
    records = catalog_records(rows[:12], answers, repaired)
    first = records[0]["attributes"]["color"]
    assert set(first) == {"value", "source", "prediction", "confidence", "repaired"} and first["source"] == "catalog"


def test_constrained_decoding_forces_valid_json_from_a_random_model(trained):
    model, template, *_ , features, _ = trained
    answers = decode_constrained(model.eval(), template, features[:6])
    assert all(set(a) == set(ATTRS) and all(a[k] in template.values[k] for k in ATTRS) for a in answers)


def test_batched_constrained_decoding_is_the_one_row_greedy_answer(trained):
    """The batch's masked left padding and per-row positions change nothing: each row's answer is
    the greedy choice among allowed tokens that a plain unbatched loop makes on the full sequence."""
    model, template, *_, features, _ = trained
    model.eval()
    batched = decode_constrained(model, template, features[:10])
    for row, answer in zip(features[:10], batched):
        prefix, ids, chosen = model.prefix(row[None]), [], {}
        for i, a in enumerate(template.attributes):
            ids += template.pieces[i][1:] if i else template.pieces[0]
            cands = {v: seq + [template.pieces[i + 1][0]] for v, seq in template.value_ids[a].items()}
            taken: list[int] = []
            while not any(len(s) == len(taken) for s in cands.values()):
                embeds = torch.cat([prefix, model.lm.get_input_embeddings()(torch.tensor([ids + taken]))], 1)
                logits = model.lm(inputs_embeds=embeds).logits[0, -1]
                allowed = sorted({s[len(taken)] for s in cands.values()})
                taken.append(allowed[int(logits[allowed].argmax())])
                cands = {v: s for v, s in cands.items() if s[:len(taken)] == taken}
            chosen[a] = next(v for v, s in cands.items() if len(s) == len(taken))
            ids += taken
        assert chosen == answer


def test_save_and_load_give_the_same_answers(trained, tmp_path, cfg):
    model, template, tokenizer, labels, rows, features, _ = trained
    settings = {k: cfg[k] for k in ("language", "layers", "backbone", "image_size", "prompt", "seed")}
    save_vlm(tmp_path / "vlm", model, labels, {**settings, "feature_dim": features.shape[1]})
    loaded, template2, labels2, _, tokenizer2 = load_vlm(tmp_path / "vlm", cache_dir(None))
    before = model.eval().generate_text(features[:4], tokenizer, 12)
    after = loaded.generate_text(features[:4], tokenizer2, 12)
    assert before == after and template2.values == template.values
    # merged, and scored on the template's tokens only (the tied head's rows): the same answers
    assert decode_constrained(loaded, template2, features[:6]) == decode_constrained(model, template, features[:6])


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    """A tiny random LLaVA (CLIP vision tower + Llama) with its processor, saved like a Hub model."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = load_tokenizer("tiny", cache_dir(None))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, patch_size=16, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    config = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                        num_attention_heads=2, image_size=32, patch_size=16),
                         text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    folder = tmp_path_factory.mktemp("tiny-llava")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_hugging_face_image_text_to_text_path(demo_shards, tiny_llava, cfg, tmp_path):
    """`language: hf:<folder>`: the same training, extraction and save/load on a HF VLM."""
    from catalog_search.vlm.train import image_inputs

    _, kept = demo_shards
    rows = kept.to_dict("records")[:32]
    labels = LabelSet.fit(rows, {a: [] for a in ATTRS}, 2, "none")
    hf = {**cfg, "language": f"hf:{tiny_llava}", "epochs": 2}
    pixels = image_inputs(hf, [r["image"] for r in _images(demo_shards, rows)], 16, torch.device("cpu"))
    assert pixels.shape[1:] == (3, 32, 32)
    model, template, tokenizer = build(hf, labels, 0, cache_dir(None))
    record = fit(model, template, labels, rows, pixels, hf, torch.device("cpu"))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n and "language_model" in n for n in names)
    assert record["epochs"][-1]["loss"] < record["epochs"][0]["loss"]
    for free in (False, True):
        answers, _ = extract(model, template, tokenizer, pixels[:6], 6, torch.device("cpu"), free=free)
        assert len(answers) == 6 and all(template.parse(template.dumps(a))[0] == a for a in answers)
    settings = {k: hf[k] for k in ("language", "layers", "backbone", "image_size", "prompt", "seed")}
    save_vlm(tmp_path / "vlm", model, labels, {**settings, "feature_dim": 0})
    loaded, _, _, _, tokenizer2 = load_vlm(tmp_path / "vlm", cache_dir(None))
    assert model.eval().generate_text(pixels[:3], tokenizer, 10) == loaded.generate_text(pixels[:3], tokenizer2, 10)


def test_extraction_targets_rows_with_a_gap():
    rows = [{"color": "Red", "pattern": "solid"}, {"color": None, "pattern": "solid"}, {"color": "Red"},
            {"color": "Navy", "pattern": float("nan")}]
    assert needs_extraction(rows, ["color", "pattern"]) == [1, 2, 3]
    assert needs_extraction(rows, ["color"]) == [1]


def test_a_first_load_that_converts_the_model_starts_training_from_the_same_weights(demo_shards, cfg, monkeypatch):
    """The packaged GGUF is converted on a machine's first load, which draws random numbers; the
    fresh LoRA and projector must not depend on it (a fresh clone's numbers equal a second run's)."""
    import catalog_search.vlm.build as vlm_build

    _, rows = demo_shards
    labels = LabelSet.fit(rows.to_dict("records")[:48], {a: [] for a in ATTRS}, 2, "none")
    cached, _, _ = build(cfg, labels, 8, cache_dir(cfg["cache_dir"]))
    load = vlm_build.load_language_model
    monkeypatch.setattr(vlm_build, "load_language_model", lambda *a, **k: (load(*a, **k), torch.rand(1000))[0])
    converting, _, _ = build(cfg, labels, 8, cache_dir(cfg["cache_dir"]))
    fresh, other = ({n: p for n, p in m.named_parameters() if p.requires_grad} for m in (cached, converting))
    assert any("lora_A" in n for n in fresh) and any(not n.startswith("lm.") for n in fresh)
    assert fresh.keys() == other.keys()
    for name, p in fresh.items():
        assert torch.equal(p, other[name]), name


def test_layers_keep_the_first_decoder_layers():
    from catalog_search.vlm.language import load_language_model

    torch.manual_seed(0)
    full = load_language_model("tiny", cache_dir(None), 100)
    torch.manual_seed(0)
    cut = load_language_model("tiny", cache_dir(None), 100, layers=1)
    assert cut.config.num_hidden_layers == len(cut.model.layers) == 1 and len(full.model.layers) == 2
    assert torch.equal(cut.model.layers[0].mlp.up_proj.weight, full.model.layers[0].mlp.up_proj.weight)
    assert cut(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 100)
    from transformers import LlamaConfig, LlamaForCausalLM

    from catalog_search.vlm.language import truncate

    deep = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=6,
                                        num_attention_heads=2, num_key_value_heads=1))
    layers = list(deep.model.layers)
    kept = truncate(deep, 3)  # the first two and the last one, renumbered for the key/value cache
    assert list(kept.model.layers) == [layers[0], layers[1], layers[5]]
    assert [layer.self_attn.layer_idx for layer in kept.model.layers] == [0, 1, 2]
    out = kept(input_ids=torch.tensor([[1, 2]]), use_cache=True)
    assert kept(input_ids=torch.tensor([[3]]), past_key_values=out.past_key_values).logits.shape == (1, 1, 100)


def test_int8_copy_decodes_valid_answers_and_leaves_the_float_model(trained, tmp_path, cfg):
    model, template, tokenizer, labels, rows, features, _ = trained
    settings = {k: cfg[k] for k in ("language", "layers", "backbone", "image_size", "prompt", "seed")}
    save_vlm(tmp_path / "vlm", model, labels, {**settings, "feature_dim": features.shape[1]})
    model, template, *_ = load_vlm(tmp_path / "vlm", cache_dir(None))  # merged, as the stages load it
    fast = quantized(model, "int8")
    assert fast is not model and quantized(model, None) is model
    assert all(type(m) is not torch.nn.Linear for m in fast.lm.modules() if "Linear" in type(m).__name__)
    assert any(type(m) is torch.nn.Linear for m in model.lm.modules())  # the float model is untouched
    for answer in decode_constrained(fast, template, features[:4]):
        assert template.parse(template.dumps(answer))[0] == answer
