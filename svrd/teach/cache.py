"""A persistent, content-addressed cache of teacher answers (SQLite in WAL mode).

Every answer is committed the moment it arrives, keyed by the sha256 of (backend, model,
prompt version, generation settings, pid, sample index). A run killed at any moment (even
SIGKILL) loses at most the answers still in flight; re-running sends no request for work
already done. WAL with synchronous=NORMAL survives a process crash (only a power loss can
drop the last commits). The cache holds answers and their provenance, never credentials.

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


def cache_key(backend: str, model: str, prompt_version: str, generation: dict, pid: str, sample: int) -> str:
    """sha256 over a canonical JSON of everything that determines the teacher's answer."""
    blob = json.dumps(
        {"backend": backend, "model": model, "prompt_version": prompt_version, "generation": generation,
         "pid": str(pid), "sample": int(sample)},
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

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, text in self._db.execute(f"SELECT key, text FROM answers WHERE key IN ({marks})", chunk):
                found[key] = text
        return found

    def put(self, key: str, text: str, *, pid: str, sample: int, backend: str, model: str, prompt_version: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers (key, pid, sample, backend, model, prompt_version, text, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, str(pid), int(sample), backend, model, prompt_version, text, time.time()),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class NullCache:
    """For the free, deterministic reference backend: same interface, stores nothing."""

    path = None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        return {}

    def put(self, key: str, text: str, **_: object) -> None:
        pass

    def __len__(self) -> int:
        return 0

    def close(self) -> None:
        pass
