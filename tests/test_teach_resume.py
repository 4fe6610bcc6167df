"""A teach run SIGKILLed mid-way resumes without repeating a request; the API key leaks nowhere."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from teacher_server import (
    GOLD_RE,
    STAGE,
    FakeTeacher,
    llava_cot_answer,
    make_problems,
    make_stage_dir,
    teach_cfg,
)

from svrd.teach import read_problems, teach, write_outputs

KEY = "sk-test-PLANTED-123"


def cached(cache_file: Path) -> set[tuple[str, int]]:
    if not cache_file.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{cache_file}?mode=ro", uri=True, timeout=5) as db:
            return set(db.execute("SELECT pid, sample FROM answers"))
    except sqlite3.OperationalError:  # table not created yet
        return set()


def start_stage(cwd: Path, cache_dir: Path, log: Path, **env) -> subprocess.Popen:
    full_env = dict(os.environ, SVRD_CACHE_DIR=str(cache_dir), SVRD_PLANTED_KEY=KEY, **env)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, str(STAGE)], cwd=cwd, env=full_env, stdout=fh, stderr=fh)


def odd_wrong_first(pid: str, sample: int, prompt: str) -> str:
    """Odd questions conclude wrongly at sample 0 (so a second round runs), rightly at sample 1."""
    gold = GOLD_RE.search(prompt).group(1)
    wrong = "A" if gold != "A" else "B"
    return llava_cot_answer(wrong if int(pid[1:]) % 2 and sample == 0 else gold)


def assert_no_key_anywhere(root: Path) -> None:
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert KEY.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_sigkill_midway_then_resume_repeats_nothing(tmp_path):
    train, val = make_problems(36), make_problems(12, "val", prefix="v")
    total = 48 + 24  # one round for everyone, a second for the odd ones
    with FakeTeacher(delay=0.05, responder=odd_wrong_first) as server:
        make_stage_dir(tmp_path, train, val, backend="openai", model="fake-teacher", base_url=server.base_url,
                       api_key_env="SVRD_PLANTED_KEY", concurrency=4, samples=2, temperature=0.5)
        cache_file = tmp_path / "cache" / "teach.sqlite"

        proc = start_stage(tmp_path, tmp_path / "cache", tmp_path / "run1.log")
        deadline = time.monotonic() + 30
        while len(cached(cache_file)) < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        done_before = cached(cache_file)
        assert 8 <= len(done_before) < total, "the run was not interrupted mid-way"
        assert not (tmp_path / "data" / "teach" / "rationales.parquet").exists()
        n_first = len(server.requests)

        proc = start_stage(tmp_path, tmp_path / "cache", tmp_path / "run2.log")
        assert proc.wait(timeout=60) == 0, (tmp_path / "run2.log").read_text()
        second = [(r["pid"], r["sample"]) for r in server.requests[n_first:]]
        assert not set(second) & done_before  # nothing already received is asked again
        assert len(second) == len(set(second))
        assert len(cached(cache_file)) == total
        assert {r["authorization"] for r in server.requests} == {f"Bearer {KEY}"}  # the key was used

        # The same run uninterrupted (in-process, fresh cache) gives the same table.
        cfg = teach_cfg(**yaml.safe_load((tmp_path / "params.yaml").read_text())["teach"])
        splits = tmp_path / "data" / "split"
        fresh = teach(read_problems(splits / "train.parquet", splits / "val.parquet"), cfg,
                      cache_path=tmp_path / "fresh" / "teach.sqlite", progress=False)
        write_outputs(fresh, tmp_path / "fresh" / "rationales.parquet", tmp_path / "fresh" / "teach.json")

    resumed = pq.read_table(tmp_path / "data" / "teach" / "rationales.parquet")
    pids = resumed.column("pid").to_pylist()
    assert pids == [r["pid"] for r in train + val] and len(set(pids)) == len(pids)
    assert resumed.equals(pq.read_table(tmp_path / "fresh" / "rationales.parquet"))
    assert resumed.column("sample").to_pylist() == [int(p[1:]) % 2 for p in pids]
    log = (tmp_path / "run2.log").read_text()
    assert "48 questions" in log and "48 agreed" in log
    assert_no_key_anywhere(tmp_path)  # tables, metrics, cache, logs


def test_planted_api_key_stays_out_of_a_failing_run(tmp_path):
    with FakeTeacher(faults={"q0004": ["401"]}) as server:
        make_stage_dir(tmp_path, make_problems(6), make_problems(2, "val", prefix="v"), backend="openai",
                       model="fake-teacher", base_url=server.base_url, api_key_env="SVRD_PLANTED_KEY",
                       concurrency=2, max_retries=1)
        failed = start_stage(tmp_path, tmp_path / "cache", tmp_path / "fail.log")
        assert failed.wait(timeout=60) == 2
        assert {r["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    log = (tmp_path / "fail.log").read_text()
    assert "teach: error: teacher failed on pid q0004: request refused (HTTP 401" in log
    assert (tmp_path / "cache" / "teach.sqlite").exists()
    assert_no_key_anywhere(tmp_path)
