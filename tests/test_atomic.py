"""Atomic artifacts: an exception or a SIGKILL mid-write never leaves a half-written file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from svrd.io import atomic_dir, atomic_path, write_json, write_table

REPO = Path(__file__).resolve().parents[1]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_path_exception_keeps_old_file(tmp_path):
    dest = tmp_path / "a.json"
    write_json(dest, {"v": 1})
    old = dest.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert dest.read_bytes() == old
    assert temp_files(tmp_path) == []


def test_atomic_path_success_replaces(tmp_path):
    dest = tmp_path / "sub" / "a.txt"
    with atomic_path(dest) as tmp:
        tmp.write_text("new")
        assert not dest.exists()  # nothing at the destination until the end
    assert dest.read_text() == "new" and temp_files(dest.parent) == []


def test_atomic_dir_exception_keeps_old_dir(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "weights.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        (tmp / "weights.bin").write_bytes(b"half")
        raise RuntimeError("boom")
    assert (dest / "weights.bin").read_bytes() == b"old"
    assert temp_files(tmp_path) == []
    with atomic_dir(dest) as tmp:
        (tmp / "weights.bin").write_bytes(b"new")
    assert sorted(os.listdir(dest)) == ["weights.bin"] and (dest / "weights.bin").read_bytes() == b"new"
    assert temp_files(tmp_path) == []


def test_write_table_exception_keeps_old_table(tmp_path):
    dest = tmp_path / "t.parquet"
    write_table(dest, pa.table({"x": [1, 2, 3]}))
    old = dest.read_bytes()
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_table(dest, [{"x": "not a number"}], schema=pa.schema([("x", pa.int64())]))
    assert dest.read_bytes() == old and temp_files(tmp_path) == []


WRITER = """
import os, sys
import numpy as np, pyarrow as pa
from svrd.io import write_table
dest = sys.argv[1]
rng = np.random.default_rng(0)
rows = 400_000
blob = pa.FixedSizeBinaryArray.from_buffers(pa.binary(40), rows, [None, pa.py_buffer(rng.bytes(40 * rows))])
table = pa.table({"x": np.arange(rows), "blob": blob})
print("ready", flush=True)
while True:
    write_table(dest, table)
"""


def test_sigkill_mid_write_leaves_old_or_complete_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed_mid_write = 0
    for run, delay in enumerate([0.0, 0.1, 0.35, 0.6]):
        folder = tmp_path / str(run)
        folder.mkdir()
        dest = folder / "big.parquet"
        write_table(dest, pa.table({"x": [7]}))  # the old artifact
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(dest)], stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        table = pq.read_table(dest)  # never half-written: it must read back whole
        assert table.num_rows in (1, 400_000)
        if table.num_rows == 400_000:
            assert table.column("x")[-1].as_py() == 399_999
        # A killed writer leaves its own temp file behind (nothing can remove it), never a broken dest.
        left = temp_files(folder)
        assert all(name.endswith(".tmp") for name in left)
        killed_mid_write += bool(left)
    assert killed_mid_write >= 1  # the kills did land inside a write
