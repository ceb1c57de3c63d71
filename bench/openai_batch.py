"""The openai_batch backend's own cost on this machine, against the local Files/Batches server of
the tests (tests/fake_openai.py): what each step adds on top of the rules clean, per product, and
what a re-run costs once everything is answered (no request may go out). Prints JSON.

    python bench/openai_batch.py                   # the demo catalog already in data/raw (4000 products)
    python bench/openai_batch.py --faults 0.05     # 5% of answers malformed on their first attempt
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from catalog_search import catalog
from catalog_search.cleaning.openai_batch.workflow import BatchCleaning
from catalog_search.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import FakeOpenAI  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--raw", type=Path, default=Path("data/raw/catalog.parquet"))
    ap.add_argument("--faults", type=float, default=0.0, help="share of products whose first answer is malformed")
    args = ap.parse_args()
    raw = catalog.load(args.raw)
    os.environ["OPENAI_API_KEY"] = "sk-bench-not-a-real-key-000"
    fake = FakeOpenAI({r["title_raw"]: r for r in raw.to_dict("records")}, os.environ["OPENAI_API_KEY"])
    for title in random.Random(0).sample(list(raw["title_raw"]), int(args.faults * len(raw))):
        fake.answer_faults[title] = ["malformed"]
    work = Path(tempfile.mkdtemp(prefix="bench-openai-batch-"))
    cfg = load_config().clean.model_dump()
    cfg["openai_batch"].update(base_url=fake.base_url, state_dir=str(work / "state"), poll_seconds=0.05,
                               max_poll_seconds=0.2)
    job = BatchCleaning(args.raw, work / "clean", cfg)
    rules, t_rules = timed(job.run_rules)
    estimate, t_dry = timed(lambda: job.prepare(dry_run=True))
    _, t_prepare = timed(job.prepare)
    _, t_dispatch = timed(job.dispatch)
    _, t_monitor = timed(lambda: job.monitor(wait=True))
    metrics, t_rest = timed(job.run)  # retries (if any) and finalize, with a second rules pass
    job.close()
    calls = sum(fake.calls.values())
    job = BatchCleaning(args.raw, work / "clean", cfg)
    _, t_rerun = timed(job.run)
    job.close()
    request_bytes = sum(len(u) for u in fake.uploads())
    print(json.dumps({
        "products": rules["rows_kept"], "faults": args.faults,
        "seconds": {"rules": t_rules, "dry_run": t_dry, "prepare": t_prepare, "dispatch": t_dispatch,
                    "monitor_collect": t_monitor, "retries_and_finalize": t_rest, "rerun_all_answered": t_rerun},
        "prepare_requests_per_s": round(estimate["requests"] / t_prepare, 1),
        "request_kb_per_product": round(request_bytes / 1e3 / metrics["openai_batch"]["requests_run"], 2),
        "dry_run_estimate": {k: estimate[k] for k in ("requests", "files", "estimated_input_tokens",
                                                      "estimated_output_tokens", "estimated_usd")},
        "openai_batch": {k: v for k, v in metrics["openai_batch"].items() if k != "rules_baseline"},
        "http_calls": calls, "http_calls_on_rerun": sum(fake.calls.values()) - calls,
    }, indent=2))
    fake.close()


if __name__ == "__main__":
    main()
