"""clean.backend openai_batch: the rules clean first (image checks, dedupe, and every row's
fallback), then one VLM request per kept product through the OpenAI Batch API.

Steps (CLI: `catalog-search clean prepare|dispatch|monitor|finalize`; the DVC stage runs them all
and resumes where a previous run stopped):
    prepare   rules clean into <state_dir>/rules; request files for every product without an answer
    dispatch  upload each request file and create its batch (adopting one a killed run created)
    monitor   poll with backoff; download a finished batch's output and error files, validate and
              store each answer; a failure is retried by the next prepare up to max_attempts
    finalize  merge the answers into data/clean; fallen-back rows keep the rules result and say why
The API key is read from OPENAI_API_KEY by the openai client only; nothing here stores or prints it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow.parquet as pq

from catalog_search import catalog
from catalog_search.cleaning.openai_batch import ATTRIBUTE_FIELDS
from catalog_search.cleaning.openai_batch.requests import ENDPOINT, RequestBuilder, RequestFiles
from catalog_search.cleaning.openai_batch.schema import answer_model, parse_answer, response_format
from catalog_search.cleaning.openai_batch.store import FINAL, LedgerBusy, Outcome, StateStore
from catalog_search.cleaning.rules import clean_catalog
from catalog_search.cleaning.scoring import CleanScore
from catalog_search.cleaning.text import CaptionTemplates, assemble_captions
from catalog_search.io import atomic_path, read_json, write_json

TERMINAL = {"completed", "failed", "expired", "cancelled"}
ROWS_PER_LOOKUP = 500


class MissingAPIKey(RuntimeError):
    pass


class NotFinished(RuntimeError):
    """finalize was asked for while some products have no final answer yet."""


def make_client(cfg: dict):
    """An openai client for clean.openai_batch; the key comes from the environment only."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise MissingAPIKey(
            "clean.backend is openai_batch but OPENAI_API_KEY is not set. Set it in the shell that runs the "
            "stage (export OPENAI_API_KEY=...); it is read from the environment only, never from params.yaml. "
            "To see what would be sent and its estimated cost first: `catalog-search clean prepare --dry-run`.")
    from openai import OpenAI

    return OpenAI(base_url=cfg["base_url"] or None, max_retries=cfg["max_retries"], timeout=cfg["timeout_seconds"])


class BatchCleaning:
    """One catalog's batch cleaning, driven by the ledger in clean.openai_batch.state_dir."""

    def __init__(self, raw_path: Path, out_dir: Path, cfg: dict, client=None):
        self.raw_path, self.out_dir, self.cfg, self.p = Path(raw_path), Path(out_dir), cfg, cfg["openai_batch"]
        self.state_dir = Path(self.p["state_dir"])
        self.rules_dir = self.state_dir / "rules"
        self.store = StateStore(self.state_dir / "state.sqlite")
        self.model = answer_model(self.p["vocabulary"] or {})
        self.builder = RequestBuilder.from_params(self.p, response_format(self.model))
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.p)
        return self._client

    def close(self) -> None:
        self.store.close()

    # the DVC stage
    def run(self) -> dict:
        """Every step until each product has an answer or has fallen back; returns the metrics."""
        self.run_rules()
        while True:
            self.prepare()
            self.dispatch()
            if not self.store.open_batches():
                return self.finalize()
            self.monitor(wait=True)

    # prepare
    def run_rules(self) -> dict:
        """The rules clean into <state_dir>/rules: the kept rows get requests, and stay as fallback."""
        shutil.rmtree(self.rules_dir, ignore_errors=True)
        metrics = clean_catalog(self.raw_path, self.rules_dir, self.cfg)
        write_json(self.rules_dir / "metrics.json", metrics)
        return metrics

    def _products(self) -> Iterator[list[tuple[str, str, bytes, str]]]:
        """Chunks of (product_id, title_raw, image bytes, key) of the rules-cleaned catalog."""
        path = self.rules_dir / "catalog.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `catalog-search clean prepare` first")
        source = pq.ParquetFile(path)
        for batch in source.iter_batches(batch_size=ROWS_PER_LOOKUP, columns=["product_id", "title_raw", "image_path"]):
            chunk = []
            for row in batch.to_pylist():
                title = row["title_raw"] if isinstance(row["title_raw"], str) else ""
                image = (self.rules_dir / row["image_path"]).read_bytes()
                chunk.append((row["product_id"], title, image, self.builder.key(row["product_id"], title, image)))
            yield chunk

    def prepare(self, dry_run: bool = False) -> dict:
        """Write request files for products with no answer (new, or failed with attempts left).
        With dry_run nothing is written; the summary says what would be sent and its estimated cost."""
        p, counts, tokens = self.p, Counter(), 0
        files = RequestFiles(self.state_dir / "requests", self.store.next_file_number(), p["max_requests_per_file"],
                             int(p["max_file_mb"] * 1_000_000), self._record_file, dry_run)
        for chunk in self._products():
            known = self.store.lookup([key for *_, key in chunk])
            for product_id, title, image, key in chunk:
                item = known.get(key)
                if item and item.status != "failed":
                    counts[item.status] += 1
                    continue
                line = self.builder.line(key, title, image)
                if not files.fits(line):
                    counts["too_large"] += 1
                    if not dry_run:
                        self.store.fall_back(key, product_id, f"request is {len(line) / 1e6:.1f} MB, over "
                                                              f"clean.openai_batch.max_file_mb={p['max_file_mb']}")
                    continue
                counts["requests"] += 1
                counts["retries"] += item is not None
                tokens += self.builder.estimated_input_tokens(title, p["estimate"]["tokens_per_image"])
                files.add(key, product_id, line)
        files.flush()
        output_tokens = counts["requests"] * p["estimate"]["output_tokens"]
        usd = (tokens * p["estimate"]["usd_per_million_input"] + output_tokens * p["estimate"]["usd_per_million_output"]) / 1e6
        return {"requests": counts["requests"], "retries": counts["retries"], "files": files.files,
                "already_answered": counts["done"], "fallen_back": counts["fallback"] + counts["too_large"],
                "in_flight": counts["prepared"] + counts["sent"], "estimated_input_tokens": tokens,
                "estimated_output_tokens": output_tokens, "estimated_usd": round(usd, 4)}

    def _record_file(self, path: Path, items: list[tuple[str, str]], nbytes: int) -> None:
        self.store.add_request_file(path.name, items, nbytes)

    # dispatch
    def dispatch(self) -> list[str]:
        """Upload each request file that has no batch yet and create its batch; returns the batch ids.
        A batch that a killed run created for the same uploaded file is adopted, not created twice."""
        created = []
        for name, file_id, uploaded_at in self.store.files_to_dispatch():
            if file_id is None:
                with open(self.state_dir / "requests" / name, "rb") as f:
                    file_id = self.client.files.create(file=(name, f, "application/jsonl"), purpose="batch").id
                self.store.set_file_id(name, file_id)
                uploaded_at = time.time()
            batch = self._batch_for(file_id, uploaded_at) or self.client.batches.create(
                input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h",
                metadata={"catalog_search_request_file": name})
            self.store.record_batch(name, batch.id, batch.status)
            created.append(batch.id)
            print(f"clean: {name} -> batch {batch.id} ({batch.status})")
        return created

    def _batch_for(self, file_id: str, uploaded_at: float | None):
        """The batch already created from `file_id`, if any (listing is newest first)."""
        for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == file_id:
                return batch
            if uploaded_at and batch.created_at < uploaded_at - 3600:
                return None
        return None

    # monitor
    def monitor(self, wait: bool) -> dict[str, str]:
        """Poll the open batches; collect the finished ones. With `wait`, poll until none is open,
        backing off (x2 up to max_poll_seconds) while nothing moves. Returns batch id -> status."""
        from openai import APIConnectionError, APIStatusError

        delay, deadline, seen = self.p["poll_seconds"], time.time() + self.p["max_wait_hours"] * 3600, {}
        while True:
            moved = False
            try:
                for batch_id in self.store.open_batches():
                    batch = self.client.batches.retrieve(batch_id)
                    counts = batch.request_counts
                    progress = (batch.status, counts.completed if counts else None, counts.failed if counts else None)
                    moved |= seen.get(batch_id) != progress
                    seen[batch_id] = progress
                    self.store.update_batch(batch_id, batch.status, batch.output_file_id, batch.error_file_id)
                    if batch.status in TERMINAL:
                        self._collect(batch)
            except (APIConnectionError, APIStatusError) as e:
                if not wait or (isinstance(e, APIStatusError) and e.status_code < 500 and e.status_code != 429):
                    raise
                print(f"clean: polling failed ({type(e).__name__}); retrying in {delay:.0f} s")
            if not self.store.open_batches() or not wait:
                return {batch_id: progress[0] for batch_id, progress in seen.items()}
            if time.time() > deadline:
                raise TimeoutError(f"batches still open after clean.openai_batch.max_wait_hours="
                                   f"{self.p['max_wait_hours']}; progress is saved, re-run to keep waiting")
            delay = self.p["poll_seconds"] if moved else min(delay * 2, self.p["max_poll_seconds"])
            time.sleep(delay)

    def _collect(self, batch) -> None:
        """Download a finished batch's output and error files, then settle its items in one transaction."""
        outcomes: dict[str, Outcome] = {}
        for kind, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
            if not file_id:
                continue
            path = self.state_dir / "results" / f"{batch.id}.{kind}.jsonl"
            if not path.exists():
                content = self.client.files.content(file_id).content
                with atomic_path(path) as tmp:
                    tmp.write_bytes(content)
            for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
                if raw.strip():
                    key, outcome = self._outcome(raw, f"{path.name} line {number}")
                    if key:
                        outcomes[key] = outcome
        why = f"batch {batch.id} ended {batch.status} without an answer for this request"
        if batch.errors and batch.errors.data:
            why += f" ({batch.errors.data[0].code}: {batch.errors.data[0].message})"
        counts = self.store.settle_batch(batch.id, outcomes, why, self.p["max_attempts"])
        print(f"clean: batch {batch.id} {batch.status}: {dict(sorted(counts.items()))}")

    def _outcome(self, raw: bytes, where: str) -> tuple[str | None, Outcome | None]:
        """(custom_id, what it says) for one line of an output or error file."""
        try:
            line = json.loads(raw)
            key = line["custom_id"]
        except (ValueError, KeyError, TypeError):
            print(f"clean: {where}: not a batch result line, skipped (its request is retried)")
            return None, None
        if line.get("error"):
            error = line["error"]
            return key, Outcome("failed", reason=f"{error.get('code')}: {error.get('message')}")
        response = line.get("response") or {}
        body = response.get("body") or {}
        if response.get("status_code") != 200:
            message = (body.get("error") or {}).get("message")
            return key, Outcome("failed", reason=f"HTTP {response.get('status_code')}: {message}")
        usage = body.get("usage") or {}
        tokens = {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)}
        try:
            message = body["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            return key, Outcome("invalid", reason="no choices in the response", **tokens)
        if message.get("refusal"):
            return key, Outcome("invalid", reason=f"refused: {message['refusal']}", **tokens)
        answer, problem = parse_answer(self.model, message.get("content"))
        if problem:
            return key, Outcome("invalid", reason=problem, **tokens)
        return key, Outcome("done", answer=answer.model_dump_json(), **tokens)

    def cancel(self) -> list[str]:
        """Cancel the open batches; their answered requests are still collected by monitor."""
        ids = self.store.open_batches()
        for batch_id in ids:
            self.client.batches.cancel(batch_id)
        return ids

    # finalize
    def finalize(self) -> dict:
        """Merge the answers into `out_dir` (catalog, rejected rows, images); returns the metrics."""
        rules_metrics = read_json(self.rules_dir / "metrics.json")
        products = catalog.load(self.rules_dir / "catalog.parquet")
        keys = [key for chunk in self._products() for *_, key in chunk]
        entries = self.store.lookup(keys)
        waiting = Counter(entries[k].status if k in entries else "not prepared" for k in keys
                          if k not in entries or entries[k].status not in FINAL)
        if waiting:
            raise NotFinished(f"{sum(waiting.values())} products have no final answer yet ({dict(waiting)}): run "
                              "`catalog-search clean prepare`, `dispatch` and `monitor --wait`, then finalize")
        merged, score = self._merge(products, [entries[k] for k in keys])
        shutil.rmtree(self.out_dir / "images", ignore_errors=True)
        shutil.copytree(self.rules_dir / "images", self.out_dir / "images")
        shutil.copy2(self.rules_dir / "rejected.parquet", self.out_dir / "rejected.parquet")
        catalog.save(merged, self.out_dir / "catalog.parquet")
        totals = self.store.totals(keys)
        fallback = merged["clean_note"].dropna()
        baseline = {k: rules_metrics.pop(k) for k in ("title_exact_match", "attribute_agreement") if k in rules_metrics}
        return {**rules_metrics, **score.metrics(), "openai_batch": {
            "model": self.p["model"], "products": len(keys), "requests_sent": totals.get("requests_sent", 0),
            "answered": int((merged["cleaned_by"] == "openai_batch").sum()), "invalid_answers": totals.get("invalid", 0),
            "failed_requests": totals.get("failed", 0), "fallen_back": len(fallback),
            "fallback_reasons": dict(Counter(r.split(":")[0] for r in fallback).most_common(10)),
            "input_tokens": totals.get("input_tokens", 0), "output_tokens": totals.get("output_tokens", 0),
            "rules_baseline": baseline}}

    def _merge(self, products: pd.DataFrame, entries: list) -> tuple[pd.DataFrame, CleanScore]:
        """Answers replace the title and the attributes the picture shows (mapped onto the catalog's
        own spelling of a value, case-insensitively); captions are rebuilt from the new values."""
        templates = CaptionTemplates.from_params(self.cfg["captions"]["templates"])
        spelling = {a: {str(v).lower(): v for v in products[a].dropna().unique()} for a in ATTRIBUTE_FIELDS}
        rows, score = [], CleanScore()
        for row, entry in zip(products.to_dict("records"), entries):
            row["cleaned_by"], row["clean_note"] = "rules", None
            if entry.status == "done":
                answer = json.loads(entry.answer)
                old_title, old_templated = row["title"], templates.render(row)
                row["title"] = answer["clean_title"]
                for a in ATTRIBUTE_FIELDS:
                    if isinstance(answer[a], str) and answer[a].strip():
                        row[a] = spelling[a].get(answer[a].strip().lower(), answer[a].strip())
                source = [c for c in row["captions"] if c not in {old_title, row["description"], *old_templated}]
                row["captions"] = assemble_captions(row["title"], source, row["description"], templates.render(row))
                row["cleaned_by"] = "openai_batch"
            else:
                row["clean_note"] = entry.reason
            score.add(row)
            rows.append(row)
        return pd.DataFrame(rows), score


STEPS = ["prepare", "dispatch", "monitor", "finalize", "cancel"]


def run_step(step: str, raw_path: Path, out_dir: Path, cfg: dict, metrics_path: Path = Path("metrics/clean.json"),
             dry_run: bool = False, wait: bool = False) -> int:
    """One CLI step (or `all`, the DVC stage); prints what happened and returns an exit code.
    Errors say what to run next; the ledger keeps every finished step."""
    from openai import APIError

    try:
        cleaning = BatchCleaning(raw_path, out_dir, cfg)
    except LedgerBusy as e:
        print(f"clean: {e}", file=sys.stderr)
        return 2
    try:
        if step in ("prepare", "all"):
            rules = cleaning.run_rules()
            print(f"clean: rules kept {rules['rows_kept']} / {rules['rows_in']}, rejected {rules['rejected_by_reason']}")
        if dry_run:
            summary = cleaning.prepare(dry_run=True)
            print(f"clean: dry run, nothing sent: {summary['requests']} requests ({summary['retries']} retries) in "
                  f"{summary['files']} file(s); ~{summary['estimated_input_tokens']:,} input and "
                  f"~{summary['estimated_output_tokens']:,} output tokens, ~${summary['estimated_usd']:.2f} "
                  f"(clean.openai_batch.estimate); {summary['already_answered']} already answered, "
                  f"{summary['in_flight']} in flight, {summary['fallen_back']} fallen back")
            return 0
        if step == "all":
            metrics = cleaning.run()
        elif step == "prepare":
            summary = cleaning.prepare()
            print(f"clean: prepared {summary['requests']} requests in {summary['files']} file(s) "
                  f"(~${summary['estimated_usd']:.2f}); next: catalog-search clean dispatch")
            return 0
        elif step == "dispatch":
            print(f"clean: {len(cleaning.dispatch())} batch(es) created; next: catalog-search clean monitor --wait")
            return 0
        elif step == "monitor":
            statuses = cleaning.monitor(wait=wait)
            print(f"clean: batches {dict(Counter(statuses.values()))}; items {cleaning.store.status_counts()}")
            return 0
        elif step == "cancel":
            print(f"clean: cancelled {cleaning.cancel()}; `catalog-search clean monitor --wait` collects their answers")
            return 0
        else:
            metrics = cleaning.finalize()
        write_json(metrics_path, metrics)
        batch = metrics["openai_batch"]
        print(f"clean: {batch['answered']} / {batch['products']} products cleaned by {batch['model']}, "
              f"{batch['fallen_back']} kept the rules result {batch['fallback_reasons']}; "
              f"{batch['requests_sent']} requests sent; agreement {metrics.get('attribute_agreement', {})}")
        return 0
    except (MissingAPIKey, NotFinished, TimeoutError, FileNotFoundError) as e:
        print(f"clean: {e}", file=sys.stderr)
        return 2
    except APIError as e:
        print(f"clean: OpenAI API error ({type(e).__name__}: {e.message}). Progress is saved in "
              f"{cleaning.state_dir}; re-run the same step to resume.", file=sys.stderr)
        return 1
    finally:
        cleaning.close()
