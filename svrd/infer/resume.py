"""Partial logs: finished rows appended (and fsynced) as each batch ends, read back by a resumed run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from svrd.io import atomic_path


def run_fingerprint(model_path: str, params, pids: list[str]) -> str:
    """Identifies an inference run, so partial results are reused only by the same run."""
    h = hashlib.sha256()
    local = Path(model_path)
    files = sorted(local.rglob("*")) if local.is_dir() else []
    # Name, size and mtime of a local model's files: cheap, and changes whenever distill rewrites it.
    h.update(json.dumps([model_path] + [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]).encode())
    h.update(json.dumps({"infer": params.infer.model_dump(exclude={"models"}),
                         "image_tokens": params.student.image_tokens}, sort_keys=True).encode())
    h.update("\n".join(pids).encode())
    return h.hexdigest()[:16]


def load_partial(path) -> dict[str, dict]:
    """Rows of a partial log, pid -> row. A last line cut by a kill is dropped and cut off the file,
    so rows appended by the resumed run start on a line of their own.

    Lines may name their batch (`"batch": [pids]`, stripped from the rows returned). A batch's rows
    are drawn together (padding, per-batch sampling seeds), and one batch can take several writes,
    so a kill may leave part of one: those rows are dropped and cut off too, and the resumed run
    redoes the batch whole, as an uninterrupted run did it."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    lines, rows, intact = [], {}, 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        lines.append((row, line))
        rows[row["pid"]] = row
        intact += len(line)
    kept = [(row, line) for row, line in lines if all(p in rows for p in row.get("batch", [row["pid"]]))]
    if intact < len(data) or len(kept) < len(lines):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"".join(line for _, line in kept))
    return {row["pid"]: {k: v for k, v in row.items() if k != "batch"} for row, _ in kept}


@contextlib.contextmanager
def partial_log(path):
    """Yields `persist(rows)`, which appends finished rows to `path` and fsyncs: a killed run loses
    at most the batch in flight (load_partial reads the file back)."""
    with open(path, "a", encoding="utf-8") as log:
        def persist(rows: list[dict]) -> None:
            batch = [row["pid"] for row in rows]  # see load_partial: a batch cut short is redone whole
            for row in rows:
                log.write(json.dumps({**row, "batch": batch}) + "\n")
            log.flush()
            os.fsync(log.fileno())

        yield persist
