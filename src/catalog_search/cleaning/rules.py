"""The rules backend of the clean stage: every input row ends up kept or rejected with a reason.

The raw catalog streams through in chunks of `chunk_rows`: the main process checks ids and text
and tracks duplicates, worker processes decode and store the images, and both outputs are
written chunk by chunk, so memory stays flat however large the catalog. Two chunks are in
flight: the workers check chunk k+1 while the main process settles chunk k.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from catalog_search import catalog
from catalog_search.cleaning import BACKENDS
from catalog_search.cleaning.dedupe import Deduplicator
from catalog_search.cleaning.images import ImageResult, ImageSettings, inspect_batch
from catalog_search.cleaning.scoring import CleanScore
from catalog_search.cleaning.text import CaptionTemplates, TitleRules, assemble_captions, clean_text, clean_title
from catalog_search.io import atomic_path
from catalog_search.params import check_choice

WORKER_BATCH = 32  # images per pool task
TEXT_FIELDS = ["description", "query", *catalog.ATTRIBUTES]  # written through clean_text


@dataclass
class _Chunk:
    rows: dict[int, dict]  # the raw rows by source row number
    rejected: list[dict]  # rows the text/id checks already refused
    pending: list[tuple[int, str]]  # (row, stored image name) waiting for their image check
    results: object  # the pool's AsyncResult, or _Done when checked in-process


class _InProcess:
    """Stands in for a pool when clean.workers is 0: the same code path, no processes."""

    def map_async(self, fn, batches):
        return _Done([fn(b) for b in batches])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@dataclass
class _Done:
    value: list

    def get(self) -> list:
        return self.value


def image_name(product_id: str, fmt: str) -> str:
    """A file name safe for any product id (ids may hold '/', spaces, unicode)."""
    return f"{hashlib.sha1(product_id.encode()).hexdigest()[:20]}.{fmt}"


class Cleaner:
    """Rules cleaning of one raw catalog into `out_dir/{catalog,rejected}.parquet` + `images/`."""

    def __init__(self, raw_path: Path, out_dir: Path, cfg: dict):
        check_choice("clean.backend", cfg["backend"], BACKENDS)
        self.raw_path, self.out_dir, self.cfg = raw_path, out_dir, cfg
        self.rules = TitleRules.from_params(cfg["title"])
        self.templates = CaptionTemplates.from_params(cfg["captions"]["templates"])
        self.images = ImageSettings(**cfg["image"])
        self.dedupe = Deduplicator(cfg["dedupe"]["exact"], cfg["dedupe"]["near"], cfg["dedupe"]["max_distance"])
        self.seen_ids: dict[str, str] = {}  # product_id -> where its first row is (file and row)
        self.reasons: Counter = Counter()
        self.duplicates_grouped: Counter = Counter()
        self.rows_in = self.rows_kept = 0
        self.score = CleanScore()

    def run(self) -> dict:
        """Clean everything; returns the metrics. Raises CatalogError when no row is usable."""
        source = pq.ParquetFile(self.raw_path)
        schema = catalog.arrow_schema(source.schema_arrow)
        kept_tmp = self.out_dir / ".catalog.unmerged.parquet"
        with ExitStack() as stack:
            kept = stack.enter_context(pq.ParquetWriter(kept_tmp, schema))
            rejected_path = stack.enter_context(atomic_path(self.out_dir / "rejected.parquet"))
            rejected = stack.enter_context(pq.ParquetWriter(rejected_path, catalog.REJECTED_SCHEMA))
            pool = stack.enter_context(self._pool())
            bar = stack.enter_context(tqdm(total=source.metadata.num_rows, desc="clean", unit="row"))
            previous: _Chunk | None = None
            for batch in source.iter_batches(batch_size=self.cfg["chunk_rows"]):
                rows = dict(enumerate(batch.to_pylist(), start=self.rows_in))
                self.rows_in += batch.num_rows
                chunk = self._submit(rows, pool)
                if previous is not None:
                    self._settle(previous, kept, rejected, schema, bar)
                previous = chunk
            if previous is not None:
                self._settle(previous, kept, rejected, schema, bar)
        self._finalise_groups(kept_tmp, self.out_dir / "catalog.parquet")
        return self._metrics()

    def _pool(self):
        workers = self.cfg["workers"] if self.cfg["workers"] is not None else os.cpu_count()
        if workers == 0:
            return _InProcess()
        # forkserver: workers start lean (no copy of the parent's memory, no inherited threads),
        # forked from a server that imported the image code once
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["catalog_search.cleaning.images"])
        return context.Pool(workers)

    def _reject(self, writer: pq.ParquetWriter, rows: list[dict]) -> None:
        if rows:
            self.reasons.update(r["reason"] for r in rows)
            writer.write_table(pa.Table.from_pylist(rows, schema=catalog.REJECTED_SCHEMA))

    def _where(self, i: int, row: dict) -> str:
        """Where a raw row came from, for messages: its source file and row when the reader gave one."""
        return row.get("source") or f"{self.raw_path} row {i}"

    def _rejection(self, i: int, row: dict, reason: str, message: str, duplicate_of: str | None = None) -> dict:
        where = self._where(i, row)
        return {"source_row": i, "source": where, "product_id": row["product_id"], "image_path": row["image_path"],
                "title_raw": row["title_raw"], "reason": reason, "message": f"{where}: {message}",
                "duplicate_of": duplicate_of}

    def _submit(self, rows: dict[int, dict], pool) -> _Chunk:
        """Text and id checks here; images that pass go to the workers."""
        out, pending = [], []
        for i, row in rows.items():
            pid = row["product_id"]
            if not isinstance(pid, str) or not pid.strip():
                out.append(self._rejection(i, row, "missing_product_id", "empty product_id; every row needs a unique id"))
            elif pid in self.seen_ids:
                out.append(self._rejection(i, row, "duplicate_product_id",
                                           f"product_id {pid!r} is already used at {self.seen_ids[pid]} (the "
                                           "first row with an id wins); ids must be unique (fix the source)",
                                           duplicate_of=pid))
            else:
                self.seen_ids[pid] = self._where(i, row)
                raw_title = row["title_raw"] if isinstance(row["title_raw"], str) else ""
                if not raw_title.strip():
                    out.append(self._rejection(i, row, "missing_title", f"product {pid!r} has no title; give it one "
                                                                        "in the source (the column mapped to title_raw)"))
                elif not (title := clean_title(raw_title, self.rules)):
                    out.append(self._rejection(i, row, "empty_title", f"product {pid!r}: nothing is left of title "
                                                                      f"{raw_title!r} after the clean.title rules; give "
                                                                      "it a descriptive title or loosen clean.title"))
                else:
                    row["title"] = title
                    pending.append((i, image_name(pid, self.images.format)))
        tasks = [(self._image_source(rows[i]["image_path"]), str(self.out_dir / "images" / name)) for i, name in pending]
        batches = [tasks[k:k + WORKER_BATCH] for k in range(0, len(tasks), WORKER_BATCH)]
        return _Chunk(rows, out, pending, pool.map_async(partial(inspect_batch, settings=self.images), batches))

    def _image_source(self, image_path: str | None) -> str | None:
        """The raw image_path as a file to open (relative to the raw catalog); URLs stay URLs."""
        if not isinstance(image_path, str) or not image_path:
            return None
        return image_path if "://" in image_path else str(catalog.resolve_image(self.raw_path, image_path))

    def _settle(self, chunk: _Chunk, kept: pq.ParquetWriter, rejected: pq.ParquetWriter, schema: pa.Schema,
                bar: tqdm) -> None:
        """Image verdicts and duplicates, in row order (first occurrence wins), then write."""
        results: list[ImageResult] = [r for batch in chunk.results.get() for r in batch]
        out, keep = list(chunk.rejected), []
        for (i, name), result in zip(chunk.pending, results):
            row = chunk.rows[i]
            if result.reason:
                out.append(self._rejection(i, row, result.reason, result.message))
                continue
            duplicate = self.dedupe.check(result.sha256, result.phash)
            if duplicate and duplicate.action == "reject":
                (self.out_dir / "images" / name).unlink()
                what = "the same image file bytes" if duplicate.kind == "exact" else "a near-identical picture"
                out.append(self._rejection(i, row, f"duplicate_image_{duplicate.kind}",
                                           f"{what} as product {duplicate.of!r} at {self.seen_ids[duplicate.of]}, "
                                           f"which is kept (clean.dedupe.{duplicate.kind}: reject; group or keep "
                                           "keeps both)", duplicate_of=duplicate.of))
                continue
            if duplicate:  # group
                self.dedupe.merge(row["group_id"], duplicate)
                self.duplicates_grouped[duplicate.kind] += 1
            self.dedupe.add(row["product_id"], row["group_id"], result.sha256, result.phash)
            keep.append(self._finish_row(row, name, duplicate.of if duplicate else None))
        self._reject(rejected, sorted(out, key=lambda r: r["source_row"]))
        if keep:
            kept.write_table(pa.Table.from_pylist(keep, schema=schema))
        self.rows_kept += len(keep)
        bar.update(len(chunk.rows))

    def _finish_row(self, row: dict, name: str, duplicate_of: str | None) -> dict:
        """The kept row as written: every text field through clean_text (the title went through
        clean_title), captions assembled from the cleaned fields."""
        out = dict(row)
        out.update({c: clean_text(row[c]) or None for c in TEXT_FIELDS if isinstance(row[c], str)})
        out.update(image_path=f"images/{name}", duplicate_of=duplicate_of,
                   captions=assemble_captions(row["title"], row["captions"] or [], out["description"],
                                              self.templates.render(out)),
                   query=out["query"] or row["title"].lower())
        self.score.add(out)  # where the source has ground truth (the demo catalog)
        return out

    def _finalise_groups(self, unmerged: Path, final: Path) -> None:
        """Rewrite group_id where duplicates joined groups (streamed: memory stays flat)."""
        with atomic_path(final) as tmp:
            if not self.dedupe.merged:
                os.replace(unmerged, tmp)
                return
            source = pq.ParquetFile(unmerged)
            with pq.ParquetWriter(tmp, source.schema_arrow) as writer:
                for batch in source.iter_batches(batch_size=self.cfg["chunk_rows"]):
                    groups = [self.dedupe.find(g) for g in batch.column("group_id").to_pylist()]
                    batch = batch.set_column(batch.schema.get_field_index("group_id"), "group_id",
                                             pa.array(groups, batch.schema.field("group_id").type))
                    writer.write_batch(batch)
        unmerged.unlink(missing_ok=True)

    def _metrics(self) -> dict:
        rejected = sum(self.reasons.values())
        metrics = {"rows_in": self.rows_in, "rows_kept": self.rows_kept, "rows_rejected": rejected,
                   "rejected_by_reason": dict(sorted(self.reasons.items())),
                   "duplicates_grouped": dict(sorted(self.duplicates_grouped.items()))}
        metrics.update(self.score.metrics())
        if self.rows_in != self.rows_kept + rejected:  # the promise of this stage: nothing is lost
            raise RuntimeError(f"clean lost rows: {self.rows_in} in, {self.rows_kept} kept, {rejected} rejected")
        if not self.rows_kept:
            raise catalog.CatalogError(
                f"{self.raw_path}: no usable row among {self.rows_in} (rejected by reason: "
                f"{self.reasons.most_common()}); see {self.out_dir / 'rejected.parquet'} and fix the source.")
        return metrics


def clean_catalog(raw_path: Path, out_dir: Path, cfg: dict) -> dict:
    """Clean the raw catalog at `raw_path` into `out_dir`; returns the metrics (see Cleaner)."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return Cleaner(Path(raw_path), Path(out_dir), cfg).run()
