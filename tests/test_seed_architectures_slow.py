"""The seed architectures (random weights, `pretrained=None`) take LoRA in every scenario and a
real training step through the project's trainer path (gradient cache included).

Slow (several minutes on 2 cores): `make test-slow`. With weights, a user runs them as
`dvc exp run -S model.name=ViT-B-16 -S model.pretrained=<tag or checkpoint file>`.
"""
import copy

import numpy as np
import open_clip
import pytest
import torch

from catalog_search.core import packaged
from catalog_search.core.data import load_split
from catalog_search.core.device import autocast
from catalog_search.models.lora import apply_scenario
from catalog_search.models.registry import ModelUnavailable, create_model
from catalog_search.models.scenarios import SCENARIOS
from catalog_search.training.data import SplitEncoder
from catalog_search.training.distributed import World
from catalog_search.training.gradcache import contrastive_step
from catalog_search.training.trainer import contrastive_loss, logit_args, param_groups, set_train_mode

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
LORA = {"r": 4, "alpha": 8, "dropout": 0.05, "image_last_blocks": 2, "text_last_blocks": 2}
ARCHS = {"ViT-B-32": "infonce", "ViT-B-16": "infonce", "ViT-B-16-SigLIP2-256": "siglip"}


@pytest.fixture
def offline_siglip_tokenizer(monkeypatch):
    """SigLIP2's Gemma tokenizer lives on the Hugging Face hub, unreachable here. The model is the
    real architecture; only its tokenizer is stood in for by the packaged MiniLM one (its ids fit
    in SigLIP2's 256k vocabulary), at SigLIP2's context length."""
    real = open_clip.get_tokenizer

    def get_tokenizer(name, **kw):
        if "SigLIP2" in name:
            return open_clip.tokenizer.HFTokenizer(packaged.minilm_path(), context_length=64)
        return real(name, **kw)

    monkeypatch.setattr(open_clip, "get_tokenizer", get_tokenizer)


def test_siglip2_without_its_tokenizer_says_how_to_get_it():
    with pytest.raises(ModelUnavailable, match=r"tokenizer.*timm/ViT-B-16-SigLIP2-256.*internet"):
        create_model("ViT-B-16-SigLIP2-256", "none", loss="siglip")


@pytest.mark.parametrize("arch", ARCHS)
def test_seed_architecture_trains_in_every_scenario(arch, demo_shards, offline_siglip_tokenizer):
    loss = ARCHS[arch]
    base = create_model(arch, "none", loss=loss)
    samples = load_split(demo_shards[0], "train")[:8]
    for name in ("linear_probe", "vision_lora", "text_lora", "dual_lora", "full"):
        scenario = SCENARIOS[name]
        bundle = copy.copy(base)
        bundle.model = copy.deepcopy(base.model)
        apply_scenario(bundle.model, scenario, LORA)
        model = bundle.model
        set_train_mode(model, scenario)
        frozen = {t for t in ("image", "text") if scenario.tower_mode(t) == "frozen"}
        enc = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, samples, frozen, CPU, 4)
        idx = list(range(8))
        image, text = enc.inputs("image", idx), enc.inputs("text", enc.sample_captions(idx, np.random.default_rng(0)))
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        before = {n: p.detach().clone() for n, p in trainable.items()}
        optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
        value = contrastive_step(enc, image, text, contrastive_loss(loss, World()), logit_args(model, loss), 4,
                                 lambda l: l.backward(), lambda: autocast(CPU))
        optimizer.step()
        assert torch.isfinite(value), (arch, name)
        assert all(p.grad is not None for p in trainable.values()), (arch, name)
        lora_b = [n for n in trainable if "lora_B" in n]
        assert bool(lora_b) == (name in ("vision_lora", "text_lora", "dual_lora")), (arch, name)
        assert all(trainable[n].grad.abs().sum() > 0 for n in lora_b), (arch, name)
        moved = [n for n in trainable if not torch.equal(trainable[n], before[n])]
        assert len(moved) >= len(trainable) - len([n for n in trainable if "lora_A" in n]), (arch, name)
