"""A teach run SIGKILLed at several points resumes without repeating a request and writes what an
uninterrupted run writes; the API key leaks nowhere."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from teacher_server import (
    GOLD_RE,
    STAGE,
    FakeTeacher,
    llava_cot_answer,
    make_problems,
    make_stage_dir,
)

from svrd.params import load_params
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


def start_stage(cwd: Path, cache_dir: Path, log: Path, argv: list[str] | None = None) -> subprocess.Popen:
    """stages/teach.py (or `python argv...`) in `cwd`, its output in `log`."""
    env = dict(os.environ, SVRD_CACHE_DIR=str(cache_dir), SVRD_PLANTED_KEY=KEY)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, *(argv or [str(STAGE)])], cwd=cwd, env=env, stdout=fh, stderr=fh)


def odd_wrong_first(pid: str, sample: int, prompt: str) -> str:
    """Odd questions conclude wrongly at sample 0 (so a second round runs), rightly at sample 1."""
    gold = GOLD_RE.search(prompt).group(1)
    wrong = "A" if gold != "A" else "B"
    return llava_cot_answer(wrong if int(pid[1:]) % 2 and sample == 0 else gold)


def assert_no_key_anywhere(root: Path) -> None:
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert KEY.encode() not in path.read_bytes(), f"API key leaked into {path}"


TRAIN, VAL = make_problems(36), make_problems(12, "val", prefix="v")
PIDS = [r["pid"] for r in TRAIN + VAL]
ROUND_0 = 48  # one request per question; then a second round for the odd ones (24)
TOTAL = ROUND_0 + 24
TEACH = dict(backend="openai", model="fake-teacher", api_key_env="SVRD_PLANTED_KEY", concurrency=4, samples=2,
             temperature=0.5)
# Metrics that do not depend on where a run was killed (requests and cached split the work between runs).
SAME_METRICS = ("questions", "agreed", "substituted", "answer_only", "dropped")

# Runs the stage, but once every answer is in it stalls instead of writing its outputs: the last
# kill point (all answered, nothing written) is then reachable however fast the machine is.
STALL_BEFORE_WRITING = """
import os, runpy, sys, time
import svrd.teach
svrd.teach.write_outputs = lambda *args, **kwargs: time.sleep(600)
sys.argv = [{stage!r}]
sys.path.insert(0, os.path.dirname({stage!r}))  # as `python stages/teach.py` does
runpy.run_path({stage!r}, run_name="__main__")
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same run never killed (in-process, its own server and cache): its table and what it asked."""
    root = tmp_path_factory.mktemp("teach-uninterrupted")
    with FakeTeacher(responder=odd_wrong_first) as server:
        make_stage_dir(root, TRAIN, VAL, base_url=server.base_url, **TEACH)
        splits = root / "data" / "split"
        result = teach(read_problems(splits / "train.parquet", splits / "val.parquet"),
                       load_params(root / "params.yaml").teach, cache_path=root / "teach.sqlite", progress=False)
        asked = [(r["pid"], r["sample"]) for r in server.requests]
    assert len(asked) == len(set(asked)) == TOTAL
    write_outputs(result, root / "rationales.parquet", root / "teach.json")
    return {"rationales": root / "rationales.parquet", "asked": set(asked), "metrics": result.metrics}


@pytest.mark.parametrize("kill_at", [8, ROUND_0 + 4, TOTAL], ids=["round0", "round1", "all-answered"])
def test_sigkill_then_rerun_equals_uninterrupted_and_repeats_nothing(tmp_path, uninterrupted, kill_at):
    """Killed once `kill_at` answers are in the cache (the last point: every answer in, nothing
    written), the re-run asks only what was never answered and writes the uninterrupted run's table."""
    with FakeTeacher(delay=0.05, responder=odd_wrong_first) as server:
        make_stage_dir(tmp_path, TRAIN, VAL, base_url=server.base_url, **TEACH)
        cache_file = tmp_path / "cache" / "teach.sqlite"
        driver = STALL_BEFORE_WRITING.format(stage=str(STAGE))
        proc = start_stage(tmp_path, tmp_path / "cache", tmp_path / "run1.log", argv=["-c", driver])
        deadline = time.monotonic() + 60
        while len(cached(cache_file)) < kill_at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, (tmp_path / "run1.log").read_text()
        done_before = cached(cache_file)
        # Where the kill landed: within the round it was meant for (or with every answer in).
        end_of_round = ROUND_0 if kill_at < ROUND_0 else TOTAL
        assert kill_at <= len(done_before) < end_of_round or len(done_before) == kill_at == TOTAL
        assert not (tmp_path / "data" / "teach" / "rationales.parquet").exists()
        first = [(r["pid"], r["sample"]) for r in server.requests]

        proc = start_stage(tmp_path, tmp_path / "cache", tmp_path / "run2.log")
        assert proc.wait(timeout=60) == 0, (tmp_path / "run2.log").read_text()
        second = [(r["pid"], r["sample"]) for r in server.requests[len(first):]]
        assert {r["authorization"] for r in server.requests} == {f"Bearer {KEY}"}  # the key was used

    assert not set(second) & done_before  # nothing already received is asked again
    assert len(second) == len(set(second))
    # Asked in both runs: only what was in flight when the kill landed (sent, never committed).
    assert len(set(first) & set(second)) <= TEACH["concurrency"]
    assert set(first) | set(second) == uninterrupted["asked"]  # nothing lost, nothing extra
    if kill_at == TOTAL:
        assert second == []
    assert cached(cache_file) == uninterrupted["asked"]

    rationales = tmp_path / "data" / "teach" / "rationales.parquet"
    resumed = pq.read_table(rationales)
    assert resumed.column("pid").to_pylist() == PIDS  # every pid once, in input order
    assert resumed.column("sample").to_pylist() == [int(p[1:]) % 2 for p in PIDS]
    assert sha256(rationales) == sha256(uninterrupted["rationales"])  # byte for byte
    metrics = json.loads((tmp_path / "metrics" / "teach.json").read_text())
    assert {k: metrics[k] for k in SAME_METRICS} == {k: uninterrupted["metrics"][k] for k in SAME_METRICS}
    assert metrics["cached"] == len(done_before) and metrics["requests"] == len(second)
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
