"""The arena's vote store: SQLite in WAL mode, one row per round shown and per vote cast.

A round records what was shown (query, which scenario was row A) and to which voter session
before anyone votes, so the assignment stays on the server; a round takes one vote (primary key),
from its own session only, so a retried or replayed POST cannot count twice and nobody votes on
rounds they were not shown. Unvoted rounds expire. stdlib only: the arena report runs without
the models.
"""
from __future__ import annotations

import json
import math
import secrets
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    round_id   TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    query_kind TEXT NOT NULL,           -- caption | image | text
    query      TEXT NOT NULL,           -- the text, or the query product's id
    model_a    TEXT NOT NULL,           -- scenario shown as row A (hidden from the page)
    model_b    TEXT NOT NULL,
    shown      TEXT NOT NULL            -- JSON {"A": [product ids], "B": [...]}
);
CREATE TABLE IF NOT EXISTS votes (
    round_id   TEXT PRIMARY KEY REFERENCES rounds(round_id),
    choice     TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'skip')),
    winner     TEXT,                    -- the scenario voted for; NULL for tie and skip
    voted_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
EXPIRE_EVERY_SECONDS = 60


class UnknownRound(KeyError):
    pass


class AlreadyVoted(ValueError):
    pass


class WrongSession(PermissionError):
    """A vote on a round that was shown to another voter session."""


def wilson(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """95% Wilson score interval of a proportion: sensible at small n and at 0 or 1."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class VoteStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        self._db.executescript(SCHEMA)
        if "session" not in {r[1] for r in self._db.execute("PRAGMA table_info(rounds)")}:  # an older store
            self._db.execute("ALTER TABLE rounds ADD COLUMN session TEXT")
        self._lock = threading.Lock()
        self._expired_at = 0.0

    def secret(self) -> bytes:
        """The key that signs voter sessions, kept in the store so sessions survive a restart."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('session_secret', ?)", (secrets.token_hex(32),))
            return bytes.fromhex(self._db.execute("SELECT value FROM meta WHERE key='session_secret'").fetchone()[0])

    def add_round(self, round_id: str, query_kind: str, query: str, model_a: str, model_b: str,
                  shown: dict[str, list[str]], session: str | None = None, ttl_minutes: float = 60) -> None:
        """Record a shown round; every EXPIRE_EVERY_SECONDS, delete unvoted rounds older than the ttl."""
        now = datetime.now(timezone.utc)
        with self._lock:
            self._db.execute("INSERT INTO rounds (round_id, created_at, query_kind, query, model_a, model_b, shown, "
                             "session) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (round_id, _now(), query_kind, query, model_a, model_b, json.dumps(shown), session))
            if now.timestamp() - self._expired_at >= EXPIRE_EVERY_SECONDS:
                self._expired_at = now.timestamp()
                cutoff = (now - timedelta(minutes=ttl_minutes)).isoformat(timespec="milliseconds")
                self._db.execute("DELETE FROM rounds WHERE created_at < ? AND round_id NOT IN "
                                 "(SELECT round_id FROM votes)", (cutoff,))

    def vote(self, round_id: str, choice: str, session: str | None = None) -> str | None:
        """Record `choice` for the round; returns the scenario it favours (None: tie or skip)."""
        with self._lock:
            row = self._db.execute("SELECT model_a, model_b, session FROM rounds WHERE round_id = ?",
                                   (round_id,)).fetchone()
            if row is None:
                raise UnknownRound(round_id)
            if row[2] is not None and row[2] != session:
                raise WrongSession(round_id)
            winner = {"A": row[0], "B": row[1]}.get(choice)
            try:
                self._db.execute("INSERT INTO votes VALUES (?, ?, ?, ?)", (round_id, choice, winner, _now()))
            except sqlite3.IntegrityError as e:
                raise AlreadyVoted(round_id) from e
            return winner

    def unvoted_rounds(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM rounds WHERE round_id NOT IN "
                                    "(SELECT round_id FROM votes)").fetchone()[0]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM votes").fetchone()[0]

    def stats(self) -> dict[str, Any]:
        """Per pair of scenarios: wins, ties and skips, win rates over decided votes with 95% Wilson intervals."""
        with self._lock:  # one connection shared by the server's threads: every use under the lock
            rows = self._db.execute("SELECT r.model_a, r.model_b, v.choice, v.winner "
                                    "FROM votes v JOIN rounds r USING (round_id)").fetchall()
        pairs: dict[str, dict[str, Any]] = {}
        for model_a, model_b, choice, winner in rows:
            names = sorted((model_a, model_b))
            pair = pairs.setdefault(" vs ".join(names), {"models": names, "wins": dict.fromkeys(names, 0),
                                                         "ties": 0, "skips": 0})
            if choice == "skip":
                pair["skips"] += 1
            elif choice == "tie":
                pair["ties"] += 1
            else:
                pair["wins"][winner] += 1
        out: dict[str, Any] = {"votes": len(rows), "pairs": {}}
        for key, pair in pairs.items():
            decided = sum(pair["wins"].values()) + pair["ties"]
            out["pairs"][key] = {
                "models": pair["models"], "decided": decided, "ties": pair["ties"], "skips": pair["skips"],
                "tie_rate": round(pair["ties"] / decided, 4) if decided else 0.0,
                **{name: {"wins": w, "win_rate": round(w / decided, 4) if decided else 0.0, "ci95": wilson(w, decided)}
                   for name, w in pair["wins"].items()}}
        return out
