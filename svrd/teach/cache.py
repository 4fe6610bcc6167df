"""A persistent, content-addressed cache of teacher answers (SQLite in WAL mode).

Every answer is committed the moment it arrives, keyed by the sha256 of the exact request:
the rendered prompt text and the image bytes (`request_digest`), the backend, the model, the
generation settings and the sample index. The pid is stored beside the answer for reading, but
is not in the key: Hugging Face copies reuse `hf-{split}-{row}` across datasets, and a changed
question under the same pid must be asked again. A run killed at any moment (even SIGKILL)
loses at most the answers still in flight; re-running sends no request for work already done.
WAL with synchronous=NORMAL survives a process crash (only a power loss can drop the last
commits). The cache holds answers and their provenance, never credentials.

Key format: KEY_VERSION is hashed into every key and stored in every row. Rows written under an
older format (version 1 keyed by pid, not by content) can never match a new key; they stay in
the file, are never reused, and `stale_entries` counts them so the run can say so.

Location: $SVRD_CACHE_DIR/teach.sqlite, default .svrd_cache/teach.sqlite under the working
directory (the repo root when DVC runs the stage).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

CACHE_ENV = "SVRD_CACHE_DIR"
DEFAULT_CACHE_DIR = ".svrd_cache"
CACHE_FILE = "teach.sqlite"


def default_cache_path() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR) / CACHE_FILE


KEY_VERSION = 2  # 1: (backend, model, prompt version, generation, pid, sample); 2: the request's content


def request_digest(prompt: str, image: bytes | None) -> str:
    """sha256 of what the teacher is shown: the rendered prompt text and the image's bytes."""
    h = hashlib.sha256()
    for part in (prompt.encode("utf-8"), image or b""):
        h.update(len(part).to_bytes(8, "big"))  # length-prefixed: no two (prompt, image) pairs collide by concatenation
        h.update(part)
    return h.hexdigest()


def cache_key(backend: str, model: str, generation: dict, request: str, sample: int) -> str:
    """sha256 over a canonical JSON of everything that determines the teacher's answer."""
    blob = json.dumps(
        {"key_version": KEY_VERSION, "backend": backend, "model": model, "generation": generation,
         "request": request, "sample": int(sample)},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AnswerCache:
    """Key -> teacher text. `put` commits at once; safe to share between processes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers ("
            " key TEXT PRIMARY KEY, pid TEXT NOT NULL, sample INTEGER NOT NULL,"
            " backend TEXT, model TEXT, prompt_version TEXT, text TEXT NOT NULL, created REAL)"
        )
        # A version-1 file gains the columns; its rows keep key_version NULL.
        self._add_column("key_version INTEGER")
        self._add_column("request TEXT")

    def _add_column(self, column: str) -> None:
        info = self._db.execute("PRAGMA table_info(answers)")
        columns = {row[1] for row in info}
        if column.split()[0] in columns:
            return
        try:
            self._db.execute(f"ALTER TABLE answers ADD COLUMN {column}")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise

    def stale_entries(self) -> int:
        """Answers stored under an older key format: they never match a current key."""
        query = "SELECT COUNT(*) FROM answers WHERE key_version IS NULL OR key_version != ?"
        return self._db.execute(query, (KEY_VERSION,)).fetchone()[0]

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, text FROM answers WHERE key IN ({marks})", chunk)
            for key, text in rows:
                found[key] = text
        return found

    def put(self, key: str, text: str, *, pid: str, sample: int, backend: str, model: str, prompt_version: str,
            request: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers"
            " (key, pid, sample, backend, model, prompt_version, text, created, key_version, request)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, str(pid), int(sample), backend, model, prompt_version, text, time.time(), KEY_VERSION, request),
        )

    def __len__(self) -> int:
        count = self._db.execute("SELECT COUNT(*) FROM answers")
        return count.fetchone()[0]

    def close(self) -> None:
        self._db.close()


class NullCache:
    """For the free, deterministic reference backend: same interface, stores nothing."""

    path = None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        return {}

    def put(self, key: str, text: str, **_: object) -> None:
        pass

    def stale_entries(self) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def close(self) -> None:
        pass
