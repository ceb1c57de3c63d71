"""The gradient cache gives the one-big-batch loss and gradients, for both losses, LoRA and full."""
from functools import partial

import numpy as np
import pytest
import torch

from catalog_search.core.data import load_split
from catalog_search.core.device import autocast
from catalog_search.models.lora import apply_scenario
from catalog_search.models.registry import create_model
from catalog_search.models.scenarios import SCENARIOS
from catalog_search.training.data import SplitEncoder
from catalog_search.training.distributed import World
from catalog_search.training.gradcache import contrastive_step
from catalog_search.training.trainer import contrastive_loss, logit_args, set_train_mode

CPU = torch.device("cpu")


@pytest.mark.parametrize("scenario, loss, positives", [
    ("dual_lora", "infonce", "pair"), ("dual_lora", "siglip", "pair"), ("full", "infonce", "pair"),
    ("full", "siglip", "pair"), ("vision_lora", "infonce", "pair"),
    ("dual_lora", "infonce", "caption_group"), ("dual_lora", "siglip", "caption_group")])
def test_gradient_cache_equals_one_big_batch(demo_shards, scenario, loss, positives):
    torch.manual_seed(0)
    bundle = create_model("tiny", "none", loss=loss)
    # LoRA dropout 0: micro-batches draw their masks in other calls than one big batch would
    apply_scenario(bundle.model, SCENARIOS[scenario], {"r": 4, "alpha": 8, "dropout": 0.0,
                                                       "image_last_blocks": None, "text_last_blocks": None})
    with torch.no_grad():  # LoRA B starts at zero, which would leave every lora_A gradient zero
        for name, p in bundle.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    set_train_mode(bundle.model, SCENARIOS[scenario])
    frozen = {t for t in ("image", "text") if SCENARIOS[scenario].tower_mode(t) == "frozen"}
    enc = SplitEncoder(bundle.model, bundle.preprocess, bundle.tokenizer, load_split(demo_shards[0], "train")[:32],
                       frozen, CPU, 8, precision="fp32")
    idx = list(range(32))
    captions = enc.sample_captions(idx, np.random.default_rng(0))
    image, text = enc.inputs("image", idx), enc.inputs("text", captions)
    matrix = None if positives == "pair" else torch.from_numpy(enc.positives(np.array(idx), np.array(captions), positives))
    assert matrix is None or matrix.sum() > 32  # the demo repeats captions: positives off the diagonal
    params = {n: p for n, p in bundle.model.named_parameters() if p.requires_grad}

    def step(micro):
        bundle.model.zero_grad(set_to_none=True)
        value = contrastive_step(enc, image, text, partial(contrastive_loss(loss, World()), positives=matrix), logit_args(bundle.model, loss),
                                 micro, lambda l: l.backward(), lambda: autocast(CPU, "fp32"))
        return value, {n: p.grad.clone() for n, p in params.items()}

    big_loss, big = step(32)
    for micro in (8, 5):  # 5: the last micro-batch is smaller
        small_loss, small = step(micro)
        torch.testing.assert_close(small_loss, big_loss, rtol=1e-6, atol=1e-6)
        assert big.keys() == small.keys() and len(big) > 4
        for name in big:  # float32 sums in another order: 1e-5 relative
            assert big[name].abs().sum() > 0, f"{name} got no gradient"
            torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6, msg=name)
