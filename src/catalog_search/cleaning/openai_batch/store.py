"""The ledger of batch cleaning (SQLite): every item, request file and batch, and every outcome.

An item is one product's request, keyed by what was asked (see RequestBuilder.key). It moves
    new -> prepared (written to a request file) -> sent (its file is in a batch)
        -> done (valid answer kept) | failed (retried by the next prepare) | fallback (rules row kept)
`attempts` counts the requests that ran (what the API bills): a request its batch never ran (the
batch failed as a whole, expired or was cancelled first) spends no attempt. A fallback with
attempts left (raised max_attempts, or batches that never ran it) is eligible again.
Every change is one transaction, so a kill at any point leaves a state a re-run continues from:
an item with an answer is never prepared again, and an answer is stored before its batch is
marked collected. Only ids, product ids, hashes, answers and reasons are stored; never the API key.
"""
from __future__ import annotations

import fcntl
import sqlite3
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY, product_id TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    request_file TEXT, batch_id TEXT, answer TEXT, reason TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS items_batch ON items (batch_id, status);
CREATE INDEX IF NOT EXISTS items_file ON items (request_file, status);
CREATE TABLE IF NOT EXISTS request_files (
    name TEXT PRIMARY KEY, requests INTEGER NOT NULL, bytes INTEGER NOT NULL,
    file_id TEXT, uploaded_at REAL, batch_id TEXT);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY, request_file TEXT NOT NULL, status TEXT NOT NULL, collected INTEGER NOT NULL DEFAULT 0,
    output_file_id TEXT, error_file_id TEXT, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    key TEXT NOT NULL, batch_id TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS orphans (
    batch_id TEXT PRIMARY KEY, request_file TEXT NOT NULL, input_file_id TEXT NOT NULL, status TEXT NOT NULL,
    found REAL NOT NULL);
"""
# columns added after the first ledgers were written: (table, column, declaration)
ADDED = [("items", "parts", "TEXT"), ("request_files", "tokens", "INTEGER NOT NULL DEFAULT 0")]
FINAL = ("done", "fallback")


class Item(NamedTuple):
    status: str
    attempts: int
    answer: str | None
    reason: str | None


@dataclass(frozen=True)
class Outcome:
    """What one batch said about one item: `done` with the answer JSON, or `failed`/`invalid` with why."""

    kind: str  # done | failed | invalid (the request ran) | not_run (its batch never ran it: not billed)
    answer: str | None = None
    reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0


class LedgerBusy(RuntimeError):
    pass


class StateStore:
    """The ledger at `path`, held by one process at a time: two processes dispatching the same
    request file would create two batches, i.e. pay twice."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = open(path.with_suffix(".lock"), "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the OS if the process dies
        except BlockingIOError:
            self._lock.close()
            raise LedgerBusy(f"{path} is in use by another clean step (dvc repro or catalog-search clean); "
                             "let it finish or stop it, then run this again") from None
        self.db = sqlite3.connect(path, isolation_level=None)  # explicit transactions below
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an answer acknowledged here survives a power cut
        self.db.executescript(SCHEMA)
        for table, column, declaration in ADDED:  # a ledger from an older version keeps its rows
            if column not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self.db.execute("CREATE INDEX IF NOT EXISTS items_product ON items (product_id, status)")

    def close(self) -> None:
        self.db.close()
        self._lock.close()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # items
    def lookup(self, keys: list[str]) -> dict[str, Item]:
        """The ledger's entry for each key it knows."""
        out = {}
        for k in range(0, len(keys), 500):
            chunk = keys[k:k + 500]
            rows = self.db.execute(f"SELECT key, status, attempts, answer, reason FROM items WHERE key IN "
                                   f"({','.join('?' * len(chunk))})", chunk)
            out.update({key: Item(*rest) for key, *rest in rows})
        return out

    def fall_back(self, key: str, product_id: str, reason: str) -> None:
        """An item that can never be sent (e.g. over the file size limit) keeps its rules row."""
        with self._tx():
            self.db.execute("INSERT INTO items (key, product_id, status, reason, updated) VALUES (?, ?, 'fallback', ?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET status='fallback', reason=excluded.reason, "
                            "updated=excluded.updated", (key, product_id, reason, time.time()))

    def answered_parts(self, product_ids: list[str]) -> dict[str, str | None]:
        """product id -> the key parts (JSON) of an answered request for it, under whatever settings."""
        out = {}
        for k in range(0, len(product_ids), 500):
            chunk = product_ids[k:k + 500]
            out.update(self.db.execute(f"SELECT product_id, parts FROM items WHERE status='done' AND product_id IN "
                                       f"({','.join('?' * len(chunk))})", chunk).fetchall())
        return out

    def add_request_file(self, name: str, items: list[tuple[str, str, str]], nbytes: int, tokens: int) -> None:
        """Record a written request file and move its (key, product_id, parts) items to `prepared`."""
        now = time.time()
        with self._tx():
            self.db.execute("INSERT INTO request_files (name, requests, bytes, tokens) VALUES (?, ?, ?, ?)",
                            (name, len(items), nbytes, tokens))
            self.db.executemany(
                "INSERT INTO items (key, product_id, status, request_file, parts, updated) "
                "VALUES (?, ?, 'prepared', ?, ?, ?) ON CONFLICT(key) DO UPDATE SET status='prepared', "
                "request_file=excluded.request_file, batch_id=NULL, parts=excluded.parts, updated=excluded.updated "
                "WHERE items.status IN ('failed', 'fallback')", [(k, p, name, parts, now) for k, p, parts in items])

    # request files and batches
    def next_file_number(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM request_files").fetchone()[0] + 1

    def files_to_dispatch(self) -> list[tuple[str, str | None, float | None, int]]:
        """(name, uploaded file id or None, upload time, estimated input tokens) of request files
        that have no batch yet."""
        return self.db.execute("SELECT name, file_id, uploaded_at, tokens FROM request_files WHERE batch_id IS NULL "
                               "ORDER BY name").fetchall()

    def enqueued_tokens(self) -> int:
        """Estimated input tokens of the request files whose batch is still open."""
        return self.db.execute("SELECT COALESCE(SUM(f.tokens), 0) FROM request_files f JOIN batches b "
                               "ON b.batch_id = f.batch_id WHERE b.collected=0").fetchone()[0]

    def recorded_files(self, since: float) -> dict[str, str]:
        """file id -> request file name, for files uploaded after `since` whose batch is recorded."""
        return dict(self.db.execute("SELECT file_id, name FROM request_files WHERE batch_id IS NOT NULL "
                                    "AND uploaded_at >= ?", (since,)).fetchall())

    def set_file_id(self, name: str, file_id: str) -> None:
        with self._tx():
            self.db.execute("UPDATE request_files SET file_id=?, uploaded_at=? WHERE name=?", (file_id, time.time(), name))

    def record_batch(self, name: str, batch_id: str, status: str) -> None:
        """The batch for request file `name` exists: its items are sent (attempts move when it ran them)."""
        now = time.time()
        with self._tx():
            self.db.execute("UPDATE request_files SET batch_id=? WHERE name=?", (batch_id, name))
            self.db.execute("INSERT INTO batches (batch_id, request_file, status, updated) VALUES (?, ?, ?, ?)",
                            (batch_id, name, status, now))
            self.db.execute("DELETE FROM orphans WHERE batch_id=?", (batch_id,))
            self.db.execute("UPDATE items SET status='sent', batch_id=?, updated=? "
                            "WHERE request_file=? AND status='prepared'", (batch_id, now, name))

    def open_batches(self) -> list[str]:
        return [b for (b,) in self.db.execute("SELECT batch_id FROM batches WHERE collected=0 ORDER BY batch_id")]

    def update_batch(self, batch_id: str, status: str, output_file_id: str | None, error_file_id: str | None) -> None:
        self.db.execute("UPDATE batches SET status=?, output_file_id=?, error_file_id=?, updated=? WHERE batch_id=?",
                        (status, output_file_id, error_file_id, time.time(), batch_id))

    def sent_keys(self, batch_id: str) -> list[str]:
        return [k for (k,) in self.db.execute("SELECT key FROM items WHERE batch_id=? AND status='sent'", (batch_id,))]

    def settle_batch(self, batch_id: str, outcomes: dict[str, Outcome], max_attempts: int,
                     given_up: set[str] = frozenset()) -> Counter:
        """Apply a finished batch's outcome for each of its sent items, in one transaction. A request
        that ran spends an attempt; a failure on the last allowed attempt falls back. One that never
        ran falls back only if it is in `given_up` (the caller's rounds for it are spent)."""
        counts: Counter = Counter()
        now = time.time()
        with self._tx():
            sent = self.db.execute("SELECT key, attempts FROM items WHERE batch_id=? AND status='sent'",
                                   (batch_id,)).fetchall()
            for key, attempts in sent:
                outcome = outcomes[key]
                ran = outcome.kind != "not_run"
                counts[outcome.kind] += 1
                self.db.execute("INSERT INTO events (key, batch_id, outcome, reason, at) VALUES (?, ?, ?, ?, ?)",
                                (key, batch_id, outcome.kind, outcome.reason, now))
                spent = attempts + ran
                if outcome.kind == "done":
                    status = "done"
                else:
                    status = "fallback" if (spent >= max_attempts if ran else key in given_up) else "failed"
                counts["fallback"] += status == "fallback"
                self.db.execute("UPDATE items SET status=?, attempts=?, answer=?, reason=?, input_tokens=input_tokens+?, "
                                "output_tokens=output_tokens+?, updated=? WHERE key=?",
                                (status, spent, outcome.answer, outcome.reason, outcome.input_tokens,
                                 outcome.output_tokens, now, key))
            self.db.execute("UPDATE batches SET collected=1, updated=? WHERE batch_id=?", (now, batch_id))
        return counts

    # batches created from our files that the ledger does not know (another client, an old bug)
    def record_orphan(self, batch_id: str, request_file: str, input_file_id: str, status: str) -> None:
        self.db.execute("INSERT INTO orphans (batch_id, request_file, input_file_id, status, found) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(batch_id) DO UPDATE SET status=excluded.status",
                        (batch_id, request_file, input_file_id, status, time.time()))

    def orphans(self) -> list[tuple[str, str, str]]:
        """(batch id, request file, status) of every orphan batch found."""
        return self.db.execute("SELECT batch_id, request_file, status FROM orphans ORDER BY batch_id").fetchall()

    # reports
    def status_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())

    def batch_rows(self) -> list[tuple[str, str, str, int]]:
        return self.db.execute("SELECT batch_id, request_file, status, collected FROM batches ORDER BY batch_id").fetchall()

    def totals(self, keys: list[str]) -> dict:
        """Requests that ran, outcomes (incl. not_run) and tokens over `keys` (the products being finalized)."""
        out: Counter = Counter()
        for k in range(0, len(keys), 500):
            chunk = keys[k:k + 500]
            marks = ",".join("?" * len(chunk))
            row = self.db.execute(f"SELECT COALESCE(SUM(attempts),0), COALESCE(SUM(input_tokens),0), "
                                  f"COALESCE(SUM(output_tokens),0) FROM items WHERE key IN ({marks})", chunk).fetchone()
            out.update(requests_run=row[0], input_tokens=row[1], output_tokens=row[2])
            for outcome, n in self.db.execute(f"SELECT outcome, COUNT(*) FROM events WHERE key IN ({marks}) "
                                              f"GROUP BY outcome", chunk):
                out[outcome] += n
        return dict(out)

