"""Image embedding throughput: the embed stage's path (JPEG bytes -> decode -> preprocess ->
encode, DataLoader workers) vs the model alone on tensors already on the device. Prints JSON.

    python bench/embed_throughput.py                                   # CPU, project default
    python bench/embed_throughput.py --model ViT-B-32 --pretrained none --image-size 224 \
        --batch 512 --workers 8 --images 8192                          # GPU
"""
import json
import time

import torch

from _common import build, parser, samples
from catalog_search.core.device import autocast
from catalog_search.training.data import SplitEncoder


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


if __name__ == "__main__":
    ap = parser(__doc__)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    bundle, device = build(args, "zero_shot")
    model = bundle.model.eval()
    data = samples(args.images, args.image_size)
    enc = SplitEncoder(model, bundle.preprocess, bundle.tokenizer, data, set(), device, args.batch, workers=args.workers)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)

    @torch.no_grad()
    def model_only():
        with autocast(device, args.precision):
            for _ in range(args.images // args.batch):
                model.encode_image(x)

    def pipeline():
        with autocast(device, args.precision):
            enc.embed_all("image")

    model_only(), pipeline()  # warm-up (cuDNN autotune, worker start)
    runs = {"pipeline": [], "model_only": []}
    for _ in range(2):
        runs["pipeline"].append(args.images / timed(pipeline, device))
        runs["model_only"].append(args.images // args.batch * args.batch / timed(model_only, device))
    best = {k: round(max(v), 1) for k, v in runs.items()}
    print(json.dumps({"model": args.model, "device": str(device), "precision": args.precision, "batch": args.batch,
                      "image_size": args.image_size, "workers": args.workers, "images_per_s": best,
                      "ratio_pipeline_over_model": round(best["pipeline"] / best["model_only"], 3)}, indent=1))
