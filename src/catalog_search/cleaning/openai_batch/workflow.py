"""clean.backend openai_batch: the rules clean first (image checks, dedupe, and every row's
fallback), then one VLM request per kept product through the OpenAI Batch API.

Steps (CLI: `catalog-search clean prepare|dispatch|monitor|finalize`; the DVC stage runs them all
and resumes where a previous run stopped):
    prepare   rules clean into <state_dir>/rules; request files for every product without an answer
              (warning when products answered under other settings would be billed again)
    dispatch  upload request files and create their batches while the estimated enqueued tokens
              allow (max_enqueued_tokens; null: one file in flight). A create is never retried
              blindly: after an ambiguous failure the batch is looked up by input file and adopted
    monitor   poll with backoff; download a finished batch's output and error files, validate and
              store each answer; a failure is retried by the next prepare up to max_attempts. A
              terminal batch whose file ids are not there yet stays open. Reports orphan batches
    finalize  merge the answers into data/clean; fallen-back rows keep the rules result and say why
Paying twice is what every rule here avoids: an attempt is a request that ran, a batch that never
ran its requests (failed as a whole, expired or cancelled first) spends none, and rounds of such
batches back off. The API key is read from OPENAI_API_KEY by the openai client only; nothing here
stores or prints it.
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

WHAT_CHANGED = {"image": "image bytes changed (clean.image.* or the photo)",
                "settings": "request settings changed (clean.openai_batch model, prompt, vocabulary, image_*)",
                "title": "raw title changed", "unknown": "answered before this ledger kept key parts"}

TERMINAL = {"completed", "failed", "expired", "cancelled"}
NOT_RUN_CODES = {"batch_expired", "batch_cancelled"}  # error-file lines of requests the batch never ran
ROWS_PER_LOOKUP = 500
ORPHAN_LOOKBACK_SECONDS = 7 * 24 * 3600  # monitor looks for orphans of files uploaded this recently


class MissingAPIKey(RuntimeError):
    pass


class NotFinished(RuntimeError):
    """finalize was asked for while some products have no final answer yet."""


class FilesNotReady(RuntimeError):
    """A terminal batch's counts promise an output or error file whose id has not appeared."""


def cause(reason: str) -> str:
    """The bucket of a fallback reason ("schema", "batch failed", "too large"...): every reason
    starts with its cause, then a colon, so that batch ids and sizes do not split the buckets."""
    return reason.split(":")[0]


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
        self._not_run: Counter = Counter()  # key -> rounds in this process whose batch never ran it
        self._given_up: set[str] = set()  # keys those rounds have exhausted: not prepared again by this process
        self._batch_failures = 0  # consecutive batches that failed as a whole: rounds back off
        self._missing_files: dict[str, float] = {}  # batch id -> when it was first seen terminal without its files

    @property
    def client(self):
        if self._client is None:
            self._client = make_client(self.p)
        return self._client

    def close(self) -> None:
        self.store.close()

    # the DVC stage
    def run(self) -> dict:
        """Every step until each product has an answer or has fallen back; returns the metrics.
        The rules clean runs once; a round after a batch that failed as a whole waits first
        (poll_seconds, doubling up to max_poll_seconds)."""
        self.run_rules()
        while True:
            self.prepare()
            self.dispatch()
            if not self.store.open_batches():
                return self.finalize()
            failures = self._batch_failures
            self.monitor(wait=True, until_settled=True)
            if self._batch_failures > failures:
                delay = min(self.p["poll_seconds"] * 2 ** (self._batch_failures - 1), self.p["max_poll_seconds"])
                print(f"clean: a batch failed as a whole; next round in {delay:.0f} s")
                time.sleep(delay)
            elif self._batch_failures:
                self._batch_failures = 0

    # prepare
    def run_rules(self) -> dict:
        """The rules clean into <state_dir>/rules: the kept rows get requests, and stay as fallback."""
        shutil.rmtree(self.rules_dir, ignore_errors=True)
        metrics = clean_catalog(self.raw_path, self.rules_dir, self.cfg)
        write_json(self.rules_dir / "metrics.json", metrics)
        print(f"clean: rules kept {metrics['rows_kept']} / {metrics['rows_in']}, rejected {metrics['rejected_by_reason']}")
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

    def _eligible(self, key: str, item) -> bool:
        """A product gets a request when it has none, or failed, or fell back with attempts left
        (max_attempts raised, or batches that never ran it) and this process has not given up on it."""
        if item is None or item.status == "failed":
            return True
        return item.status == "fallback" and item.attempts < self.p["max_attempts"] and key not in self._given_up

    def prepare(self, dry_run: bool = False) -> dict:
        """Write request files for every eligible product. With dry_run nothing is written; the
        summary says what would be sent and its estimated cost. Products answered before under
        other settings (a changed prompt, model, image setting or photo) are counted apart, and a
        warning says what changed and what re-sending them costs."""
        p, counts, tokens, rebill = self.p, Counter(), 0, Counter()
        files = RequestFiles(self.state_dir / "requests", self.store.next_file_number(), p["max_requests_per_file"],
                             int(p["max_file_mb"] * 1_000_000), self._record_file, dry_run)
        for chunk in self._products():
            known = self.store.lookup([key for *_, key in chunk])
            wanted = []
            for product_id, title, image, key in chunk:
                if self._eligible(key, known.get(key)):
                    wanted.append((product_id, title, image, key))
                else:
                    counts[known[key].status] += 1
            answered = self.store.answered_parts([product_id for product_id, *_ in wanted])
            for product_id, title, image, key in wanted:
                item = known.get(key)
                line = self.builder.line(key, title, image)
                if not files.fits(line):
                    counts["too_large"] += 1
                    if not dry_run:
                        self.store.fall_back(key, product_id, f"too large: the request is {len(line) / 1e6:.1f} MB, "
                                                              f"over clean.openai_batch.max_file_mb={p['max_file_mb']}")
                    continue
                parts = self.builder.parts(title, image)
                n_tokens = self.builder.estimated_input_tokens(title, p["estimate"]["tokens_per_image"])
                counts["requests"] += 1
                counts["retries"] += item is not None
                tokens += n_tokens
                if product_id in answered:
                    rebill["tokens"] += n_tokens
                    before = json.loads(answered[product_id] or "{}")
                    rebill.update([k for k in parts if before.get(k, parts[k]) != parts[k]] or ["unknown"])
                    rebill["products"] += 1
                files.add(key, product_id, line, json.dumps(parts), n_tokens)
        files.flush()
        summary = {"requests": counts["requests"], "retries": counts["retries"], "files": files.files,
                   "already_answered": counts["done"], "fallen_back": counts["fallback"] + counts["too_large"],
                   "in_flight": counts["prepared"] + counts["sent"], "estimated_input_tokens": tokens,
                   **self._cost(tokens, counts["requests"]), "rebilled": rebill["products"]}
        if rebill["products"]:
            changed = ", ".join(f"{WHAT_CHANGED[k]} for {rebill[k]}" for k in WHAT_CHANGED if rebill[k])
            print(f"clean: WARNING: {rebill['products']} products already answered under other settings will be sent "
                  f"{'' if dry_run else 'and billed '}again (~${self._cost(rebill['tokens'], rebill['products'])['estimated_usd']:.2f}): "
                  f"{changed}. Restoring the old settings reuses their answers (the ledger keeps them); "
                  "`catalog-search clean prepare --dry-run` estimates a change before it is made.")
        return summary

    def _cost(self, input_tokens: int, requests: int) -> dict:
        estimate = self.p["estimate"]
        output_tokens = requests * estimate["output_tokens"]
        usd = (input_tokens * estimate["usd_per_million_input"] + output_tokens * estimate["usd_per_million_output"]) / 1e6
        return {"estimated_output_tokens": output_tokens, "estimated_usd": round(usd, 4)}

    def _record_file(self, path: Path, items: list[tuple[str, str, str]], nbytes: int, tokens: int) -> None:
        self.store.add_request_file(path.name, items, nbytes, tokens)

    # dispatch
    def dispatch(self) -> list[str]:
        """Upload request files that have no batch yet and create their batches, while the open
        batches' estimated input tokens stay within max_enqueued_tokens (null: one file in flight;
        an account's enqueued-token limit fails a whole batch that exceeds it). Returns the batch ids.
        A batch that a killed run created for the same uploaded file is adopted, not created twice."""
        created, budget, enqueued = [], self.p["max_enqueued_tokens"], self.store.enqueued_tokens()
        for name, file_id, uploaded_at, tokens in self.store.files_to_dispatch():
            if self.store.open_batches() and (budget is None or enqueued + tokens > budget):
                break
            if file_id is None:
                with open(self.state_dir / "requests" / name, "rb") as f:
                    file_id = self.client.files.create(file=(name, f, "application/jsonl"), purpose="batch").id
                self.store.set_file_id(name, file_id)
                uploaded_at = time.time()
            batch = self._batch_for(file_id, uploaded_at) or self._create(name, file_id, uploaded_at)
            self.store.record_batch(name, batch.id, batch.status)
            created.append(batch.id)
            enqueued += tokens
            print(f"clean: {name} -> batch {batch.id} ({batch.status})")
        return created

    def _create(self, name: str, file_id: str, uploaded_at: float | None):
        """batches.create without the client's blind retries (it sends no idempotency key, so a retry
        after a lost answer creates and bills a second batch). After an ambiguous failure (connection
        error, timeout, 5xx) the batch is looked up by input file and adopted if it exists; 429 is
        retried after retry-after; other refusals stop. Up to max_retries retries, backing off."""
        from openai import APIConnectionError, APIStatusError

        client, delay = self.client.with_options(max_retries=0), self.p["poll_seconds"]
        for attempt in range(self.p["max_retries"] + 1):
            try:
                return client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h",
                                             metadata={"catalog_search_request_file": name})
            except (APIConnectionError, APIStatusError) as e:
                status = getattr(e, "status_code", None)
                if (status is not None and status < 500 and status != 429) or attempt == self.p["max_retries"]:
                    raise
                wait = _retry_after(e) or delay
                print(f"clean: creating the batch for {name} failed ({type(e).__name__}"
                      f"{f' {status}' if status else ''}); in {wait:.1f} s: "
                      f"{'retry' if status == 429 else 'look it up by input file, adopt it or retry'}")
                time.sleep(wait)
                delay = min(delay * 2, self.p["max_poll_seconds"])
                if status != 429 and (batch := self._batch_for(file_id, uploaded_at)):
                    print(f"clean: the batch for {name} was created after all ({batch.id}): adopted")
                    return batch

    def _batch_for(self, file_id: str, uploaded_at: float | None):
        """The batch already created from `file_id`, if any (listing is newest first)."""
        for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == file_id:
                return batch
            if uploaded_at and batch.created_at < uploaded_at - 3600:
                return None
        return None

    # monitor
    def monitor(self, wait: bool, until_settled: bool = False) -> dict[str, str]:
        """Report orphan batches, then poll the open batches and collect the finished ones. With
        `wait`, poll until none is open (or, with `until_settled`, until one was collected), backing
        off (x2 up to max_poll_seconds) while nothing moves. Returns batch id -> status."""
        from openai import APIConnectionError, APIStatusError

        self.find_orphans()
        delay, deadline, seen = self.p["poll_seconds"], time.time() + self.p["max_wait_hours"] * 3600, {}
        while True:
            moved = settled = False
            try:
                for batch_id in self.store.open_batches():
                    batch = self.client.batches.retrieve(batch_id)
                    counts = batch.request_counts
                    progress = (batch.status, counts.completed if counts else None, counts.failed if counts else None,
                                batch.output_file_id, batch.error_file_id)
                    moved |= seen.get(batch_id) != progress
                    seen[batch_id] = progress
                    self.store.update_batch(batch_id, batch.status, batch.output_file_id, batch.error_file_id)
                    if batch.status in TERMINAL and self._files_ready(batch, wait):
                        self._collect(batch)
                        settled = True
            except (APIConnectionError, APIStatusError) as e:
                if not wait or (isinstance(e, APIStatusError) and e.status_code < 500 and e.status_code != 429):
                    raise
                print(f"clean: polling failed ({type(e).__name__}); retrying in {delay:.0f} s")
            if not self.store.open_batches() or not wait or (settled and until_settled):
                return {batch_id: progress[0] for batch_id, progress in seen.items()}
            if time.time() > deadline:
                raise TimeoutError(f"batches still open after clean.openai_batch.max_wait_hours="
                                   f"{self.p['max_wait_hours']}; progress is saved, re-run to keep waiting")
            delay = self.p["poll_seconds"] if moved else min(delay * 2, self.p["max_poll_seconds"])
            time.sleep(delay)

    def _files_ready(self, batch, wait: bool) -> bool:
        """Whether a terminal batch can be settled: its counts promise no file whose id is missing.
        The API has been seen to report `completed` before filling output_file_id; settling then
        would re-send (and re-bill) every answered request. Such a batch stays open; with `wait`,
        for at most file_id_wait_minutes."""
        counts = batch.request_counts
        missing = [kind for kind, n, file_id in (("output", counts and counts.completed, batch.output_file_id),
                                                 ("error", counts and counts.failed, batch.error_file_id))
                   if n and not file_id]
        if not missing:
            self._missing_files.pop(batch.id, None)
            return True
        if batch.id not in self._missing_files:
            self._missing_files[batch.id] = time.time()
            print(f"clean: batch {batch.id} is {batch.status} but its {' and '.join(missing)} file id is not there "
                  "yet; it stays open and is polled again (nothing is settled or re-sent)")
        if wait and time.time() - self._missing_files[batch.id] > self.p["file_id_wait_minutes"] * 60:
            raise FilesNotReady(
                f"batch {batch.id} has been {batch.status} for over clean.openai_batch.file_id_wait_minutes="
                f"{self.p['file_id_wait_minutes']} without its {' and '.join(missing)} file id. Nothing was settled "
                "or re-sent; run `catalog-search clean monitor --wait` later to collect it")
        return False

    def find_orphans(self) -> list[tuple[str, str, str]]:
        """Batches created from this ledger's uploaded files that the ledger does not know (another
        client, or a create whose retry an older version let through): each one is billed apart from
        the ledger and its answers are not used. Reported here; `cancel` stops the open ones."""
        files = self.store.recorded_files(since=time.time() - ORPHAN_LOOKBACK_SECONDS)
        if not files:
            return []
        known = {row[0] for row in self.store.batch_rows()}
        horizon = time.time() - ORPHAN_LOOKBACK_SECONDS - 3600
        for batch in self.client.batches.list(limit=100):
            if batch.created_at < horizon:
                break
            if batch.input_file_id in files and batch.id not in known:
                self.store.record_orphan(batch.id, files[batch.input_file_id], batch.input_file_id, batch.status)
        orphans = self.store.orphans()
        for batch_id, name, status in orphans:
            print(f"clean: WARNING: batch {batch_id} ({status}) was created from {name} but is not in the ledger: "
                  "it is billed apart and its answers are not used; `catalog-search clean cancel` stops it")
        return orphans

    def _collect(self, batch) -> None:
        """Download a finished batch's output and error files, then settle its items in one
        transaction. Requests it never ran (the batch failed as a whole, expired or was cancelled
        before them) spend no attempt; after max_attempts such rounds in this process the product
        keeps its rules row for now, and is sent again by the next run."""
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
        why = f"batch {batch.status}: batch {batch.id} ended {batch.status} before running this request"
        if batch.errors and batch.errors.data:
            why += f" ({batch.errors.data[0].code}: {batch.errors.data[0].message})"
        why += "; not billed, sent again by the next run"
        keys = self.store.sent_keys(batch.id)
        for key in keys:
            if key not in outcomes or outcomes[key].kind == "not_run":
                outcomes[key] = Outcome("not_run", reason=why)
                self._not_run[key] += 1
                if self._not_run[key] >= self.p["max_attempts"]:
                    self._given_up.add(key)
        self._batch_failures += batch.status == "failed"
        counts = self.store.settle_batch(batch.id, outcomes, self.p["max_attempts"], self._given_up)
        print(f"clean: batch {batch.id} {batch.status}: {dict(sorted(counts.items()))}")
        if batch.status == "failed" and batch.errors and batch.errors.data and \
                batch.errors.data[0].code == "token_limit_exceeded":
            print("clean: the account's enqueued-token limit refused the batch: lower "
                  "clean.openai_batch.max_enqueued_tokens (or max_requests_per_file) to your tier's limit")

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
            kind = "not_run" if error.get("code") in NOT_RUN_CODES else "failed"
            return key, Outcome(kind, reason=f"{error.get('code')}: {error.get('message')}")
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
        """Cancel the open batches and the orphans still running; the ledger's batches' answered
        requests are still collected by monitor."""
        ids = self.store.open_batches()
        for batch_id in ids:
            self.client.batches.cancel(batch_id)
        for batch_id, name, _ in self.store.orphans():
            batch = self.client.batches.retrieve(batch_id)
            if batch.status not in TERMINAL and batch.status != "cancelling":
                batch = self.client.batches.cancel(batch_id)
                ids.append(batch_id)
            self.store.record_orphan(batch_id, name, batch.input_file_id, batch.status)
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
            "model": self.p["model"], "products": len(keys), "requests_run": totals.get("requests_run", 0),
            "requests_not_run": totals.get("not_run", 0),
            "answered": int((merged["cleaned_by"] == "openai_batch").sum()), "invalid_answers": totals.get("invalid", 0),
            "failed_requests": totals.get("failed", 0), "fallen_back": len(fallback),
            "fallback_reasons": dict(Counter(cause(r) for r in fallback).most_common(10)),
            "orphan_batches": len(self.store.orphans()),
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
        if dry_run or step == "prepare":
            cleaning.run_rules()
        if dry_run:
            summary = cleaning.prepare(dry_run=True)
            print(f"clean: dry run, nothing sent: {summary['requests']} requests ({summary['retries']} retries, "
                  f"{summary['rebilled']} answered before under other settings) in "
                  f"{summary['files']} file(s); ~{summary['estimated_input_tokens']:,} input and "
                  f"~{summary['estimated_output_tokens']:,} output tokens, ~${summary['estimated_usd']:.2f} "
                  f"(clean.openai_batch.estimate); {summary['already_answered']} already answered, "
                  f"{summary['in_flight']} in flight, {summary['fallen_back']} fallen back")
            return 0
        if step == "all":  # the DVC stage: the rules clean once, then every round
            metrics = cleaning.run()
        elif step == "prepare":
            summary = cleaning.prepare()
            print(f"clean: prepared {summary['requests']} requests in {summary['files']} file(s) "
                  f"(~${summary['estimated_usd']:.2f}); next: catalog-search clean dispatch")
            return 0
        elif step == "dispatch":
            created, waiting = cleaning.dispatch(), len(cleaning.store.files_to_dispatch())
            print(f"clean: {len(created)} batch(es) created" + (
                f"; {waiting} request file(s) wait for room under clean.openai_batch.max_enqueued_tokens" * bool(waiting))
                + "; next: catalog-search clean monitor --wait (it sends waiting files as batches finish)")
            return 0
        elif step == "monitor":
            statuses = cleaning.monitor(wait=wait)
            while wait and cleaning.store.files_to_dispatch():  # files dispatch left waiting for room
                cleaning.dispatch()
                statuses.update(cleaning.monitor(wait=True))
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
              f"{batch['requests_run']} requests ran; agreement {metrics.get('attribute_agreement', {})}")
        return 0
    except (MissingAPIKey, NotFinished, FilesNotReady, TimeoutError, FileNotFoundError) as e:
        print(f"clean: {e}", file=sys.stderr)
        return 2
    except APIError as e:
        print(f"clean: OpenAI API error ({type(e).__name__}: {e.message}). Progress is saved in "
              f"{cleaning.state_dir}; re-run the same step to resume.", file=sys.stderr)
        return 1
    finally:
        cleaning.close()


def _retry_after(error) -> float | None:
    """Seconds the server asked to wait (retry-after header), if any."""
    response = getattr(error, "response", None)
    try:
        return float(response.headers.get("retry-after")) if response is not None else None
    except (TypeError, ValueError):
        return None
