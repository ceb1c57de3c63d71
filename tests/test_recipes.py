"""The recipes' levers: multi-positive contrastive targets and hard-negative batches."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from catalog_search.core.data import load_split
from catalog_search.core.device import autocast, eval_mode
from catalog_search.models.registry import create_model
from catalog_search.training.data import SplitEncoder
from catalog_search.training.losses import MultiPositiveClipLoss, MultiPositiveSigLipLoss
from catalog_search.training.mining import hard_batches, mine

CPU = torch.device("cpu")


def _batch(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    positives = torch.eye(n, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = positives[0, 3] = True  # rows 0,1 share a title; caption 3 also fits image 0
    return image, text, positives


def test_multi_positive_infonce_is_the_direct_computation_and_open_clips_with_one_positive():
    image, text, positives = _batch()
    scale = torch.tensor(10.0)
    logits = scale * image @ text.T
    expected_i = np.mean([-np.mean([torch.log_softmax(logits[i], 0)[j].item() for j in range(6) if positives[i, j]])
                          for i in range(6)])
    expected_t = np.mean([-np.mean([torch.log_softmax(logits[:, j], 0)[i].item() for i in range(6) if positives[i, j]])
                          for j in range(6)])
    loss = MultiPositiveClipLoss()(image, text, scale, positives=positives)
    assert loss.item() == pytest.approx((expected_i + expected_t) / 2, rel=1e-6)
    plain = ClipLoss()(image, text, scale)
    assert MultiPositiveClipLoss()(image, text, scale, positives=torch.eye(6, dtype=torch.bool)).item() == \
        pytest.approx(plain.item(), rel=1e-6)
    assert loss.item() != pytest.approx(plain.item(), rel=1e-3)  # the extra positives change the target


def test_multi_positive_siglip_is_the_direct_computation_and_open_clips_with_one_positive():
    image, text, positives = _batch(seed=1)
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    expected = -sum(F.logsigmoid(torch.tensor(1.0 if positives[i, j] else -1.0) * (scale * image[i] @ text[j] + bias)).item()
                    for i in range(6) for j in range(6)) / 6
    loss = MultiPositiveSigLipLoss()(image, text, scale, bias, positives=positives)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = SigLipLoss()(image, text, scale, bias)
    assert MultiPositiveSigLipLoss()(image, text, scale, bias, positives=torch.eye(6, dtype=torch.bool)).item() == \
        pytest.approx(plain.item(), rel=1e-6)


def _samples():
    """Hand-made products: 0 and 1 share a title, 2 is another colour variant of 0 (same group)."""
    rows = [("a", "g0", ["Puma Men Black Sports Shoes", "black shoes"]),
            ("b", "g1", ["Puma Men Black Sports Shoes", "black shoes"]),
            ("c", "g0", ["Puma Men Navy Sports Shoes", "navy shoes"]),
            ("d", "g3", ["Red Dress", "red dress"])]
    return [{"product_id": p, "group_id": g, "captions": caps, "image": b""} for p, g, caps in rows]


def test_batch_positives_follow_caption_text_and_group():
    bundle = create_model("tiny", "none")
    enc = SplitEncoder(bundle.model, bundle.preprocess, bundle.tokenizer, _samples(), set(), CPU, 4)
    text_id = {t: i for i, t in enumerate(enc.texts)}
    rows = np.array([0, 1, 2, 3])
    captions = np.array([text_id[t] for t in ["black shoes", "Puma Men Black Sports Shoes", "navy shoes", "red dress"]])
    by_caption = enc.positives(rows, captions, "caption")
    expected = np.eye(4, dtype=bool)
    expected[0, 1] = expected[1, 0] = True  # each one's caption is one of the other's captions
    np.testing.assert_array_equal(by_caption, expected)
    by_group = enc.positives(rows, captions, "caption_group")
    expected[0, 2] = expected[2, 0] = True  # same group: variants / near-duplicate photos
    np.testing.assert_array_equal(by_group, expected)
    # a caption row repeated in the batch (two products drew the same text) matches both images
    twice = enc.positives(np.array([0, 1]), np.array([text_id["black shoes"]] * 2), "caption")
    assert twice.all()


@pytest.fixture(scope="module")
def mined(demo_shards):
    torch.manual_seed(0)
    bundle = create_model("tiny", "none")
    samples = load_split(demo_shards[0], "train")
    enc = SplitEncoder(bundle.model, bundle.preprocess, bundle.tokenizer, samples, set(), CPU, 64)
    with autocast(CPU), eval_mode(bundle.model):
        neighbours = mine(enc, (3, 12))
    return enc, neighbours, samples


def test_mined_neighbours_are_never_true_positives(mined):
    enc, neighbours, samples = mined
    titles = [s["captions"][0] for s in samples]
    assert len(neighbours) == len(enc.images)
    assert all(len(nb) <= 10 for nb in neighbours) and np.mean([len(nb) for nb in neighbours]) > 5
    for i, nb in enumerate(neighbours):
        assert i not in nb
        for j in nb:
            assert enc.groups[i] != enc.groups[j] and titles[i] != titles[j]
    assert len(set(titles)) < len(titles)  # the demo repeats titles: the guard has work to do


def test_hard_batches_hold_mined_clusters_and_no_product_twice(mined):
    enc, neighbours, _ = mined
    n, cfg = len(enc.images), {"share": 0.5, "cluster": 4}
    batches = hard_batches(neighbours, n, 16, 20, cfg, np.random.default_rng(0))
    assert len(batches) == 20
    clustered = 0
    for b in batches:
        assert len(b) == 16 and len(set(b.tolist())) == 16
        seed = int(b[0])  # the first cluster: a seed and up to 3 of its neighbours
        clustered += sum(int(j) in set(neighbours[seed].tolist()) for j in b[1:4])
    assert clustered >= 20 * 3 * 0.9
    again = hard_batches(neighbours, n, 16, 20, cfg, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # a resumed epoch re-plans the same batches
    random_only = hard_batches(neighbours, n, 16, 5, {"share": 0.0, "cluster": 4}, np.random.default_rng(0))
    assert all(len(set(b.tolist())) == 16 for b in random_only)


def test_wise_ft_interpolates_floats_and_keeps_counters():
    from catalog_search.models.wise_ft import interpolate

    z = {"w": torch.zeros(2, 2), "bn.num_batches_tracked": torch.tensor(3)}
    t = {"w": torch.ones(2, 2) * 4, "bn.num_batches_tracked": torch.tensor(7)}
    mid = interpolate(z, t, 0.25)
    torch.testing.assert_close(mid["w"], torch.ones(2, 2))
    assert mid["bn.num_batches_tracked"].item() == 7
    assert torch.equal(interpolate(z, t, 0.0)["w"], z["w"]) and torch.equal(interpolate(z, t, 1.0)["w"], t["w"])
    with pytest.raises(ValueError, match="one architecture"):
        interpolate(z, {"w": t["w"]}, 0.5)
