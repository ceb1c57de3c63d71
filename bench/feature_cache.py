"""linear_probe with the frozen-tower feature cache vs without it (both towers re-run every
step). Target: >= 5x faster per epoch. Same process, same data; prints JSON.

    python bench/feature_cache.py [--samples 512]

`epoch_s` is one training epoch; `with_cache_total_s` adds the one-off cost of building the
cache, which later epochs no longer pay.
"""
import json
import time

from _common import build, parser, samples, train_cfg
from catalog_search.models.scenarios import SCENARIOS
from catalog_search.training.trainer import train

if __name__ == "__main__":
    ap = parser(__doc__)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    data, val = samples(args.samples, args.image_size), samples(args.batch, args.image_size, seed=1)
    out = {}
    for cache in (True, False):
        bundle, device = build(args, "linear_probe")
        cfg = train_cfg(batch_size=args.batch, feature_cache=cache, precision=args.precision)
        start = time.perf_counter()
        result = train(bundle, SCENARIOS["linear_probe"], data, val, cfg, device)
        steps = result["steps"]
        # the first step is excluded from samples_per_second: scale to a whole epoch
        out["with_cache" if cache else "without_cache"] = {
            "epoch_s": round(steps * args.batch / result["samples_per_second"], 3),
            "total_s": round(time.perf_counter() - start, 2)}
    print(json.dumps({"model": args.model, "device": str(device), "samples": args.samples, **out,
                      "speedup_per_epoch": round(out["without_cache"]["epoch_s"] / out["with_cache"]["epoch_s"], 1)},
                     indent=1))
