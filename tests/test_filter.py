"""filter: one bad record of each kind stops the run (error) or is listed (skip); outputs atomic."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

import svrd.filter as filt
from svrd.errors import RecordError
from svrd.filter import filter_records, open_source

REPO = Path(__file__).resolve().parents[1]


def png(color=(10, 200, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


GOOD = png()
BASE = {"question": "Which animal is a mammal?", "choices": ["frog", "dog", "trout"], "answer": 1, "hint": "",
        "image": "image.png", "task": "closed choice", "grade": "grade2", "subject": "natural science",
        "topic": "biology", "category": "Classify", "skill": "Identify mammals", "lecture": "", "solution": ""}

# kind -> (changes to the problems.json entry, image file bytes or None for no file, field named)
BAD = {
    "corrupt-image": ({}, b"\x89PNG\r\n\x1a\n this is not a png", "image"),
    "truncated-image": ({}, png(size=(64, 64))[:60], "image"),
    "zero-byte-image": ({}, b"", "image"),
    "missing-image-file": ({}, None, "image"),
    "path-escape": ({"image": "../../../etc/passwd"}, None, "image"),
    "answer-out-of-range": ({"answer": 3}, GOOD, "answer"),
    "one-choice": ({"choices": ["dog"], "answer": 0}, GOOD, "choices"),
    "six-choices": ({"choices": list("abcdef"), "answer": 0}, GOOD, "choices"),
    "empty-question": ({"question": "  "}, GOOD, "question"),
    "non-utf8-question": ({"question": "Which \udcff animal?"}, GOOD, "question"),  # surrogateescape'd byte
    "mojibake-lecture": ({"lecture": "Mammals \ufffd fur."}, GOOD, "lecture"),
}
GOOD_PIDS = ["1", "2", "4"]


def make_release(root: Path, bad: dict[str, str]) -> Path:
    """Good pids 1, 2, 4 plus one bad record per entry of `bad` (pid -> kind)."""
    problems = {}
    for pid in GOOD_PIDS + list(bad):
        kind = bad.get(pid)
        changes, image, _ = BAD[kind] if kind else ({}, GOOD, None)
        problems[pid] = {**BASE, **changes, "split": "train" if int(pid) % 2 else "test"}
        if image is not None:
            folder = root / "images" / problems[pid]["split"] / pid
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "image.png").write_bytes(image)
    problems = dict(sorted(problems.items(), key=lambda kv: int(kv[0])))
    (root / "problems.json").write_text(json.dumps(problems), encoding="utf-8")
    return root


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("kind", BAD)
def test_each_bad_kind_stops_and_leaves_old_output(kind, tmp_path):
    release = make_release(tmp_path / "release", {"3": kind})
    out = tmp_path / "out"
    out.mkdir()
    (out / "problems.parquet").write_bytes(b"old table")
    (out / "rejects.jsonl").write_bytes(b"old rejects\n")
    records, total = open_source("scienceqa", str(release))
    with pytest.raises(RecordError) as info:
        filter_records(records, out / "problems.parquet", out / "rejects.jsonl", on_invalid="error", total=total)
    assert (info.value.pid, info.value.field) == ("3", BAD[kind][2])
    assert "pid 3" in str(info.value) and f"'{BAD[kind][2]}'" in str(info.value)
    assert (out / "problems.parquet").read_bytes() == b"old table"
    assert (out / "rejects.jsonl").read_bytes() == b"old rejects\n"
    assert leftovers(out) == []


def test_no_output_written_when_none_existed(tmp_path):
    release = make_release(tmp_path / "release", {"3": "corrupt-image"})
    records, _ = open_source("scienceqa", str(release))
    with pytest.raises(RecordError):
        filter_records(records, tmp_path / "out" / "problems.parquet", tmp_path / "out" / "rejects.jsonl")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_duplicate_pid(tmp_path):
    recs = [{**BASE, "pid": pid, "split": "train", "image": GOOD} for pid in ("1", "2", "1", "3")]
    with pytest.raises(RecordError) as info:
        filter_records(iter(recs), tmp_path / "p.parquet", tmp_path / "r.jsonl")
    assert (info.value.pid, info.value.field) == ("1", "pid") and "duplicate" in info.value.reason
    assert not (tmp_path / "p.parquet").exists()
    summary = filter_records(iter(recs), tmp_path / "p.parquet", tmp_path / "r.jsonl", on_invalid="skip")
    assert summary.kept == 3 and summary.rejected == 1
    assert pq.read_table(tmp_path / "p.parquet").column("pid").to_pylist() == ["1", "2", "3"]


def test_non_utf8_bytes_from_a_table_source(tmp_path):
    rec = {**BASE, "pid": "hf-train-000000", "split": "train", "image": GOOD, "question": b"Which \xff animal?"}
    with pytest.raises(RecordError, match="not valid UTF-8") as info:
        filter_records([rec], tmp_path / "p.parquet", tmp_path / "r.jsonl")
    assert info.value.field == "question"


def test_skip_lists_every_bad_record(tmp_path):
    bad = {str(pid): kind for pid, kind in zip(range(5, 5 + len(BAD)), BAD, strict=True)}
    release = make_release(tmp_path / "release", bad)
    records, total = open_source("scienceqa", str(release))
    dup = {**BASE, "pid": "1", "split": "train", "image": GOOD}
    out = tmp_path / "out"
    summary = filter_records([*records, dup], out / "problems.parquet", out / "rejects.jsonl",
                             on_invalid="skip", total=total)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    expected = {(pid, BAD[kind][2]) for pid, kind in bad.items()} | {("1", "pid")}
    assert {(r["pid"], r["field"]) for r in rejects} == expected
    assert all(r["reason"] for r in rejects)
    assert summary.rejected == len(expected) == len(BAD) + 1
    assert summary.read == len(GOOD_PIDS) + len(BAD) + 1
    assert summary.kept == len(GOOD_PIDS) and f"rejected {len(expected)}" in summary.line()
    assert pq.read_table(out / "problems.parquet").column("pid").to_pylist() == GOOD_PIDS


def test_text_only_records_are_dropped_unvalidated_when_images_only(tmp_path):
    recs = [{**BASE, "pid": "1", "split": "train", "image": GOOD},
            {**BASE, "pid": "2", "split": "train", "image": None, "choices": ["only one"], "answer": 0}]
    summary = filter_records(recs, tmp_path / "p.parquet", tmp_path / "r.jsonl")
    assert (summary.kept, summary.without_image, summary.rejected) == (1, 1, 0)
    with pytest.raises(RecordError, match="has 1 options"):
        filter_records(recs, tmp_path / "p.parquet", tmp_path / "r.jsonl", images_only=False)


def test_filter_streams_a_generator(tmp_path, monkeypatch):
    pulled = 0
    pulled_at_first_write = []

    def source():
        nonlocal pulled
        for i in range(3 * filt.BATCH_ROWS + 7):
            pulled += 1
            yield {**BASE, "pid": str(i), "split": "train", "image": GOOD}

    real_write = filt.pq.ParquetWriter.write_table

    def spy(self, table, *args, **kwargs):
        pulled_at_first_write.append(pulled)
        return real_write(self, table, *args, **kwargs)

    monkeypatch.setattr(filt.pq.ParquetWriter, "write_table", spy)
    summary = filter_records(source(), tmp_path / "p.parquet", tmp_path / "r.jsonl")
    assert summary.kept == 3 * filt.BATCH_ROWS + 7
    assert pulled_at_first_write[0] <= filt.BATCH_ROWS + 1
    assert len(pulled_at_first_write) == 4  # three full batches and the rest
    assert pq.read_metadata(tmp_path / "p.parquet").num_rows == summary.kept


# --- the stage as a subprocess ----------------------------------------------------------------


def run_stage(tmp_path: Path, release: Path, on_invalid: str) -> subprocess.CompletedProcess:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="scienceqa", path=str(release))
    params["filter"]["on_invalid"] = on_invalid
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, str(REPO / "stages" / "filter.py")], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stage_error_exit(tmp_path):
    release = make_release(tmp_path / "release", {"3": "answer-out-of-range"})
    proc = run_stage(tmp_path, release, "error")
    assert proc.returncode == 1, proc.stderr
    assert "pid 3" in proc.stderr and "'answer'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "project" / "data" / "filtered" / "problems.parquet").exists()

    proc = run_stage(tmp_path, release, "skip")
    assert proc.returncode == 0, proc.stderr
    filtered = tmp_path / "project" / "data" / "filtered"
    assert pq.read_table(filtered / "problems.parquet").column("pid").to_pylist() == GOOD_PIDS
    assert json.loads((filtered / "rejects.jsonl").read_text())["pid"] == "3"
    metrics = json.loads((tmp_path / "project" / "metrics" / "filter.json").read_text())
    assert metrics["rejected"] == 1 and metrics["kept"] == 3


def test_stage_missing_release_folder(tmp_path):
    proc = run_stage(tmp_path, tmp_path / "nowhere", "error")
    assert proc.returncode == 1 and "no problems.json" in proc.stderr and "Traceback" not in proc.stderr
