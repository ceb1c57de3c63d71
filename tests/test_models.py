import os

import numpy as np
import open_clip
import pytest
import timm
import torch
from open_clip.loss import ClipLoss
from peft import LoraConfig, set_peft_model_state_dict
from peft.tuners.lora import LoraModel
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_sample_image

from catalog_search.core.adapters import ADAPTER
from catalog_search.core.packaged import load_efficientnet_lite0
from catalog_search.models.export import save_model
from catalog_search.models.lora import apply_scenario, scenario_lora_config
from catalog_search.models.registry import ModelUnavailable, create_model
from catalog_search.models.scenarios import SCENARIOS
from catalog_search.params import ParamsError
from catalog_search.training.data import SplitEncoder
from catalog_search.training.trainer import set_train_mode
from conftest import assert_frozen_unchanged

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "image_last_blocks": 2, "text_last_blocks": None}
MODELS = {"tiny": 32, "minilm-efficientnet-lite0": 32}  # name -> image size for the test


def test_packaged_efficientnet_weights_classify_real_photos():
    """The key mapping is right: ImageNet classes 698 (palace) and 985 (daisy)."""
    model = timm.create_model("tf_efficientnet_lite0").eval()
    load_efficientnet_lite0(model)
    transform = open_clip.image_transform(224, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    for name, label in (("china.jpg", 698), ("flower.jpg", 985)):
        x = transform(Image.fromarray(load_sample_image(name))).unsqueeze(0)
        assert model(x).argmax().item() == label, name


def _batch(bundle, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = bundle.model.visual.preprocess_cfg["size"]
    images = torch.rand((n, 3, *size), generator=g) * 2 - 1
    texts = bundle.tokenizer([f"{c} {a}" for c, a in zip(["red", "blue", "green", "navy", "pink", "grey"],
                                                         ["dress", "coat", "bag", "shirt", "sandals", "boots"])][:n])
    return images, texts


def _loss(model, images, texts):
    img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    txt = torch.nn.functional.normalize(model.encode_text(texts), dim=-1)
    return ClipLoss()(img, txt, model.logit_scale.exp())


@pytest.mark.parametrize("scenario", ["vision_lora", "text_lora", "dual_lora"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_lora_tensor_learns_and_frozen_weights_stay_bit_identical(name, scenario):
    torch.manual_seed(0)
    bundle = create_model(name, "none", image_size=MODELS[name])
    model = bundle.model
    apply_scenario(model, SCENARIOS[scenario], LORA)
    set_train_mode(model, SCENARIOS[scenario])
    frozen = {n: t.detach().clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())
              if not (isinstance(t, torch.nn.Parameter) and t.requires_grad)}
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    images, texts = _batch(bundle)
    for step in range(2):  # lora_B starts at zero, so lora_A's gradient is zero until one step is taken
        opt.zero_grad()
        _loss(model, images, texts).backward()
        if step == 1:
            dead = [n for n, p in lora.items() if p.grad is None or p.grad.abs().sum() == 0]
            assert not dead, f"LoRA tensors without gradient: {dead[:5]}"
        opt.step()
    assert_frozen_unchanged(frozen, dict(list(model.named_parameters()) + list(model.named_buffers())), atol_mha=1e-6)
    towers = {"vision_lora": ("visual.",), "text_lora": ("text.", "transformer."), "dual_lora": ("",)}[scenario]
    assert all(n.startswith(towers) for n in lora)


def test_lora_on_out_proj_alone_never_learns():
    """Why `attn` is the target in open_clip blocks: MHA uses out_proj's weight, not its forward."""
    bundle = create_model("tiny", "none")
    model = bundle.model.eval()
    images, texts = _batch(bundle)
    with torch.no_grad():
        before = model.encode_image(images)
    LoraModel(model, LoraConfig(r=4, target_modules=["out_proj"]), ADAPTER)
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    with torch.no_grad():
        for p in lora:
            p.normal_()  # a non-zero adapter: if it were used at all, outputs would move
    for n, p in model.named_parameters():
        p.requires_grad = "lora_" in n
    assert lora and not _loss(model, images, texts).requires_grad  # no path from loss to LoRA
    torch.testing.assert_close(model.encode_image(images), before, atol=0, rtol=0)


def test_lora_last_blocks_limits_targets():
    bundle = create_model("minilm-efficientnet-lite0", "none", image_size=32)
    config = scenario_lora_config(bundle.model, SCENARIOS["dual_lora"], {**LORA, "text_last_blocks": 1})
    model = bundle.model
    LoraModel(model, config, ADAPTER)
    wrapped = {n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if "lora_" in n}
    assert {n.split(".")[3] for n in wrapped if n.startswith("visual")} == {"5", "6"}
    assert {n.split(".")[4] for n in wrapped if n.startswith("text")} == {"5"}
    assert {n.rsplit(".", 1)[1] for n in wrapped} == {"conv_pw", "conv_pwl", "query", "key", "value", "dense"}


def test_frozen_feature_cache_equals_full_encoding(demo_shards):
    from catalog_search.core.data import load_split

    shards, _ = demo_shards
    bundle = create_model("minilm-efficientnet-lite0", "none", image_size=32)
    samples = load_split(shards, "val")[:12]
    device = torch.device("cpu")
    cached = SplitEncoder(bundle.model, bundle.preprocess, bundle.tokenizer, samples, {"image", "text"}, device, 5,
                          precision="fp32")
    plain = SplitEncoder(bundle.model, bundle.preprocess, bundle.tokenizer, samples, set(), device, 5, precision="fp32")
    for tower in ("image", "text"):
        np.testing.assert_allclose(cached.embed_all(tower), plain.embed_all(tower), atol=2e-5)
    # trimming the padding columns is exact for the mean-pooled BERT tower
    texts = plain.texts[:4]
    full = bundle.model.encode_text(bundle.tokenizer(texts))
    trimmed = plain._tokens(texts)
    assert trimmed.shape[1] < bundle.tokenizer.context_length
    torch.testing.assert_close(bundle.model.encode_text(trimmed), full, atol=1e-5, rtol=1e-5)


def test_frozen_prefix_cache_equals_full_encoding_and_trains_the_same_weights(demo_shards):
    """LoRA in the last blocks: the blocks below are cached once and give the full tower's
    embeddings; the loss's gradient reaches the same LoRA tensors with the same values."""
    from catalog_search.core.data import load_split
    from catalog_search.core.towers import find_towers, frozen_prefix

    shards, _ = demo_shards
    bundle = create_model("minilm-efficientnet-lite0", "none", image_size=32)
    model = bundle.model
    apply_scenario(model, SCENARIOS["dual_lora"], {**LORA, "image_last_blocks": 2, "text_last_blocks": 2})
    towers = find_towers(model)
    prefix = {t: frozen_prefix(model, towers[t], 2) for t in ("image", "text")}
    assert [p.blocks for p in prefix.values()] == [5, 4]  # of EfficientNet's 7 stages, MiniLM's 6 layers
    assert frozen_prefix(model, towers["text"], None) is None and frozen_prefix(model, towers["text"], 6) is None
    samples = load_split(shards, "val")[:12]
    device = torch.device("cpu")
    cached = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, samples, set(), device, 5, prefix=prefix,
                          precision="fp32")
    plain = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, samples, set(), device, 5, precision="fp32")
    assert set(cached.cache) == {"image", "text"} and not plain.cache
    for tower in ("image", "text"):
        np.testing.assert_allclose(cached.embed_all(tower), plain.embed_all(tower), atol=2e-5)
    model.eval()  # no dropout: the two paths must then agree on every gradient
    rows = list(range(6))
    grads = []
    for enc in (cached, plain):
        model.zero_grad()
        loss = sum(enc.embed(t, rows).square().sum() for t in ("image", "text"))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and any("lora_" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_model_loads_in_plain_open_clip_and_peft(tmp_path, name):
    torch.manual_seed(0)
    bundle = create_model(name, "none", image_size=MODELS[name])
    model = bundle.model
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    wrapper = apply_scenario(model, SCENARIOS["dual_lora"], LORA)
    with torch.no_grad():  # stand-in for training: every trainable tensor moves
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    images, texts = _batch(bundle)
    with torch.no_grad():
        expected = model.encode_image(images), model.encode_text(texts)
    save_model(tmp_path, bundle, wrapper, {"scenario": "dual_lora"})
    merged = tmp_path / "merged"

    def outputs(m, tokens=texts):
        m.eval()
        with torch.no_grad():
            return m.encode_image(images), m.encode_text(tokens)

    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{merged}")
    tokens = open_clip.get_tokenizer(f"local-dir:{merged}")(["red dress", "blue coat"])
    assert torch.equal(tokens, bundle.tokenizer(["red dress", "blue coat"]))  # tokenizer ships in the folder
    for got, want in zip(outputs(loaded), expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    open_clip.add_model_config(merged / f"{name}.json")
    by_name = open_clip.create_model(name, pretrained=str(merged / "open_clip_model.safetensors"))
    for got, want in zip(outputs(by_name), expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the project's own factory takes the checkpoint file as `pretrained`
    reloaded = create_model(name, str(merged / "open_clip_model.safetensors"), image_size=MODELS[name]).model
    for got, want in zip(outputs(reloaded), expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # peft route: base weights + trained.safetensors + the adapter reproduce the same outputs
    fresh = create_model(name, "none", image_size=MODELS[name]).model
    fresh.load_state_dict(base_weights)
    fresh.load_state_dict(load_file(tmp_path / "trained.safetensors"), strict=False)
    LoraModel(fresh, LoraConfig.from_pretrained(str(tmp_path / "adapter")), ADAPTER)
    set_peft_model_state_dict(fresh, load_file(tmp_path / "adapter" / "adapter_model.safetensors"), ADAPTER)
    for got, want in zip(outputs(fresh), expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert '"scenario": "dual_lora"' in (tmp_path / "model_card.json").read_text()


def test_unknown_model_and_offline_tag_fail_fast():
    with pytest.raises(ParamsError, match="model.name='ViT-Z-99' is not known.*ViT-B-32"):
        create_model("ViT-Z-99", "none")
    os.environ["HF_HUB_OFFLINE"] = "1"
    with pytest.raises(ModelUnavailable, match="offline.*local checkpoint"):
        create_model("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(ParamsError, match="tags"):
        create_model("ViT-B-32", "no-such-tag")


def test_uint8_handover_equals_open_clip_preprocess():
    """Workers send uint8 pixels, the device normalises: the same tensor as open_clip's transform."""
    from PIL import Image

    from catalog_search.training.data import split_preprocess

    bundle = create_model("tiny", "none")
    to_pixels, normalize = split_preprocess(bundle.preprocess)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    pixels = to_pixels(image)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 32)
    torch.testing.assert_close(normalize(pixels[None]), bundle.preprocess(image)[None], rtol=0, atol=1e-6)
