"""bf16 autocast vs fp32 on this CPU for the default models' hot paths. Prints JSON: seconds of
each (best of `--repeats`, the two precisions alternating), the speed-up, and for forward passes
the cosine between the fp32 and the bf16 outputs (how much the numbers move).

    python bench/precision.py [--repeats 3]

Hot paths: the EfficientNet-Lite0 image tower at 64 px (every image stage), MiniLM on short
captions (every text stage), a dual_lora training step (batch 64) and an attribute VLM tune step
(SmolLM2 with 12 layers, batch 16; needs the packaged language model).
"""
import json
import time

import torch
import torch.nn.functional as F
from _common import build, parser, samples

from catalog_search.config import load_config
from catalog_search.core.device import autocast, native_bf16
from catalog_search.core.labels import LabelSet
from catalog_search.training.data import SplitEncoder
from catalog_search.vlm.build import build as build_vlm
from catalog_search.vlm.language import cache_dir
from catalog_search.vlm.train import collate


def timed(fn, precision: str, device: torch.device) -> tuple[float, torch.Tensor | None]:
    start = time.perf_counter()
    with autocast(device, precision):
        out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    bundle, device = build(args, "dual_lora")
    model = bundle.model
    data = samples(256, args.image_size)
    enc = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, data, set(), device, 128)
    pixels = enc._input("image")(enc.images)
    tokens = enc._input("text")(enc.texts[:256])

    def image():
        with torch.no_grad():
            return model.encode_image(pixels).float()

    def text():
        with torch.no_grad():
            return model.encode_text(tokens).float()

    def clip_step():
        model.train()
        img, txt = model.encode_image(pixels[:64]), model.encode_text(tokens[:64])
        logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T * 10
        loss = F.cross_entropy(logits.float(), torch.arange(64))
        loss.backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    cfg = load_config().vlm.model_dump()
    rows = [{a: f"{a} {i % 2}" for a in cfg["attributes"]} for i in range(16)]
    labels = LabelSet.fit(rows, {a: [] for a in cfg["attributes"]}, 1, "none")
    vlm, template, _ = build_vlm(cfg, labels, 1280, cache_dir(cfg["cache_dir"]))
    vlm.train()
    feats = torch.randn(16, 1280)
    ids, answer, mask = collate(template, rows, labels)

    def vlm_step():
        loss = vlm(feats, ids, answer, mask)
        loss.backward()
        vlm.zero_grad(set_to_none=True)

    out = {}
    for name, fn in [("image_forward_256", image), ("text_forward_256", text), ("dual_lora_step_64", clip_step),
                     ("vlm_tune_step_16", vlm_step)]:
        fn()  # warm-up (oneDNN primitive creation)
        best, results = {}, {}
        for _ in range(args.repeats):
            for precision in ("fp32", "bf16"):
                seconds, result = timed(fn, precision, device)
                best[precision] = min(best.get(precision, seconds), seconds)
                results[precision] = result
        row = {"fp32_s": round(best["fp32"], 3), "bf16_s": round(best["bf16"], 3),
               "speedup": round(best["fp32"] / best["bf16"], 2)}
        if results["fp32"] is not None:
            row["min_cosine"] = round(float(F.cosine_similarity(results["fp32"], results["bf16"]).min()), 4)
        out[name] = row
    print(json.dumps({"device": str(device), "bf16_native": native_bf16(),
                      "threads": torch.get_num_threads(), **out}, indent=1))


if __name__ == "__main__":
    main()
